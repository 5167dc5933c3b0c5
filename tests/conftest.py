"""Fixtures for the real-parts tests: the fake upstream, gunicorn with gevent workers, Redis.

Every server listens on a free loopback port and is stopped at the end of the session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeUpstreamProcess, make_certificate  # noqa: E402
from redis_process import RedisProcess, redis_executable  # noqa: E402
from stalls import _say_where_a_hung_test_is_stuck, pytest_configure, pytest_terminal_summary  # noqa: E402, F401 - hooks

API_KEY = "sk-test-SECRET-4f7c1e9a"  # recognisable, so leak tests can look for it
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port never handed out before in this session: a server that is still
    shutting down must not answer for the next one started on the same port."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http() -> requests.Session:
    """A client session that never goes through a proxy from the environment."""
    s = requests.Session()
    s.trust_env = False
    return s


class GunicornServer:
    """The example host app under gunicorn with gevent workers, configured through env vars."""

    def __init__(self, env: dict[str, Any], *, workers: int = 2, preload: bool = False, name: str = "proxy", conf: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"gunicorn-{name}-", suffix=".log")[1])
        full_env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        full_env.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
        full_env.setdefault("LOG_LEVEL", "INFO")
        full_env["PYTHONPATH"] = str(ROOT)
        # conf=False: a bare "-k gevent" command line, as users write it before reading the README
        config = ["-c", str(ROOT / "example_app" / "gunicorn.conf.py")] if conf else ["-k", "gevent", "--no-control-socket"]
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            *config,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--graceful-timeout",
            "3",
        ]
        if preload:
            cmd.append("--preload")
        cmd.append("example_app.wsgi:app")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # generous: under coverage, with other test processes and several servers booting at once
        # on 2 cores, a fresh clone's workers took over 30 s to import the app (a wait, not a measure)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                http().get(self.url + "/api/health", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # quick shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # no worker outlives its master
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstreamProcess]:
    with FakeUpstreamProcess(key=API_KEY) as up:
        yield up


def providers_for(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "anthropic": {"api_key": API_KEY, "base_url": base_url, "models": ["claude-*"], **extra},
        "openai": {"api_key": API_KEY, "base_url": base_url + "/v1", "models": ["gpt-4o", "gpt-4o-mini"], **extra},
        "mock": {"type": "mock", "models": ["*"], "tokens": 5, "pace_ms": 1},
    }


def base_env(upstream_url: str, tmp: Path, **overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "LLM_PROXY_PROVIDERS": providers_for(upstream_url),
        "LLM_PROXY_REQUIRE_AUTH": False,
        "LLM_PROXY_PUBLIC_HEALTH": True,
        "LLM_PROXY_RATE_LIMIT": "",
        "LLM_PROXY_RETRY_BACKOFF": 0.05,
        "LLM_PROXY_READ_TIMEOUT": 2.0,
        "LLM_PROXY_CONNECT_TIMEOUT": 2.0,
        "LLM_PROXY_KEEPALIVE": 0.5,
        "LLM_PROXY_USAGE_STORE": f"sqlite:///{tmp / 'usage.sqlite3'}",
        "JWT_SECRET_KEY": "test-jwt-secret-that-is-long-enough-32b",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def proxy(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One shared proxy: 2 gevent workers, no auth, no rate limit, quick timeouts."""
    server = GunicornServer(base_env(upstream.base_url, tmp_path_factory.mktemp("proxy")), workers=2)
    yield server
    server.stop()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Any]:
    """Factory for a proxy with its own settings; stopped after the test."""
    servers: list[GunicornServer] = []

    def start(upstream_url: str, *, workers: int = 1, preload: bool = False, conf: bool = True, **overrides: Any) -> GunicornServer:
        server = GunicornServer(base_env(upstream_url, tmp_path, **overrides), workers=workers, preload=preload, conf=conf)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    make_certificate(str(cert), str(key))
    return str(cert), str(key)


@pytest.fixture(scope="module")
def tls_upstream(tls_cert: tuple[str, str]) -> Iterator[FakeUpstreamProcess]:
    """The fake upstream over HTTPS, its certificate self-signed (trusted through ``tls_cert[0]``)."""
    with FakeUpstreamProcess(key=API_KEY, tls=tls_cert, cafile=tls_cert[0]) as up:
        yield up


# --- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    if redis_executable() is None:
        pytest.fail("redis-server is not installed; tests/run.sh installs it (apt-get install redis-server)")
    server = RedisProcess(free_port())
    yield server
    server.stop()


# --- reading the proxy's SSE answers ---------------------------------------------------------


def sse_events(resp: requests.Response) -> list[Any]:
    """Parse a proxy stream into a list of JSON events, '[DONE]', and ('error', {...}) tuples."""
    from flask_llm_proxy.upstream.sse import parse

    raw = resp.raw.read()
    out: list[Any] = ["[DONE]" if data == "[DONE]" else json.loads(data) for _, data in parse(raw)]
    # the contract's error line is always the last thing in a stream
    out += [("error", json.loads(line[7:])) for line in raw.split(b"\n") if line.startswith(b"error: ")]
    return out


def chat_body(prompt: str, model: str = "claude-3-5-sonnet-20241022", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 100, **extra}


JWT_SECRET = "test-jwt-secret-that-is-long-enough-32b"


def mock_host_app(*, tokens: int = 5, **config: Any) -> Any:
    """A host app in process: the offline mock provider (``tokens`` unpaced), no auth required, no
    ledger, a JWTManager. The caller adds ``LLMProxy`` (with or without its own limiter)."""
    from flask import Flask
    from flask_jwt_extended import JWTManager

    app = Flask("mock-host")
    app.config.update(
        {
            "LLM_PROXY_PROVIDERS": {"mock": {"type": "mock", "models": ["*"], "pace_ms": 0, "tokens": tokens}},
            "LLM_PROXY_REQUIRE_AUTH": False,
            "JWT_SECRET_KEY": JWT_SECRET,
            "LLM_PROXY_USAGE_STORE": "none",
            **config,
        }
    )
    JWTManager(app)
    return app


def make_jwt(sub: str = "alice", *, secret: str = JWT_SECRET, expires_in: int = 600, alg: str = "HS256", **claims: Any) -> str:
    """An access token as flask-jwt-extended issues them (type, fresh, jti, iat/nbf/exp)."""
    import uuid

    import jwt

    now = int(time.time())
    payload = {
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + expires_in,
        "jti": uuid.uuid4().hex,
        "type": "access",
        "fresh": False,
        **claims,
    }
    return jwt.encode(payload, secret, algorithm=alg)


def open_raw_stream(
    url: str, path: str, body: dict[str, Any], *, until: bytes, timeout: float = 10, headers: dict[str, str] | None = None
) -> tuple[socket.socket, bytes]:
    """POST over a bare socket and read until ``until`` appears: lets a test drop the
    connection at an exact point, the way a closing browser tab does."""
    host, port = url.split("//", 1)[1].split(":")
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    got = b""
    deadline = time.monotonic() + timeout
    while until not in got:
        if time.monotonic() > deadline:
            raise AssertionError(f"did not see {until!r} in {got[-300:]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {until!r}: {got[-300:]!r}")
        got += chunk
    return sock, got


def start_servers(upstream_url: str, tmp: Path, specs: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, GunicornServer]:
    def one(name: str, workers: int, overrides: dict[str, Any]) -> GunicornServer:
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return GunicornServer(base_env(upstream_url, d, **overrides), workers=workers, name=name)

    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {name: pool.submit(one, name, w, ov) for name, (w, ov) in specs.items()}
    servers, errors = {}, []
    for name, fut in futures.items():
        try:
            servers[name] = fut.result()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    if errors:
        stop_servers(servers.values())
        raise errors[0]
    return servers


def stop_servers(servers: Any) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: s.stop(), list(servers)))


def screenshot(page: Any, name: str, published: Path) -> Path:
    """A full-page screenshot into ``test-artifacts/<name>``; with ``UPDATE_SCREENSHOTS=1`` also to
    ``published`` (the picture the README or the docs show), so a test run leaves the tree clean."""
    out = ROOT / "test-artifacts" / name
    out.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        published.parent.mkdir(parents=True, exist_ok=True)
        published.write_bytes(out.read_bytes())
    return out


def wait_for(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``fn`` until it returns something true, or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def uid(prefix: str) -> str:
    """A unique scenario id or identity, so tests sharing a server never share a bucket."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:10]}"
