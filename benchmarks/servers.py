"""Starting and watching the processes a benchmark needs: the fake upstream, the proxy under
gunicorn, and /proc readings (CPU seconds, RSS, machine-wide CPU).

Nothing here imports ``tests/conftest.py``; the fake upstream is ``tests/fake_upstream.py``'s own
``FakeUpstreamProcess``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeUpstreamProcess  # noqa: E402

KEY = "bench-key"
JWT_SECRET = "bench-jwt-secret-that-is-long-enough-32b"
#: the example app's defaults, as a user who changed nothing runs it: JWT auth, a rate limit counted
#: per user (set high enough never to refuse a benchmark request), the SQLite ledger, the request log
#: line at INFO. The example app's metrics and gunicorn's access log are off by default.
DEFAULTS = {
    "LLM_PROXY_REQUIRE_AUTH": "true",
    "JWT_SECRET_KEY": JWT_SECRET,
    "LLM_PROXY_RATE_LIMIT": "1000000/minute",
    "RATELIMIT_STORAGE_URI": "memory://",
    "LOG_LEVEL": "INFO",
}
#: what earlier runs measured: no auth, no limits, no ledger, warnings only
STRIPPED = {"LLM_PROXY_REQUIRE_AUTH": "false", "LLM_PROXY_RATE_LIMIT": "", "LLM_PROXY_USAGE_STORE": "none", "LOG_LEVEL": "WARNING"}


def bench_token() -> str:
    """A long-lived access token as flask-jwt-extended issues them, for the DEFAULTS servers."""
    import time
    import uuid

    import jwt

    now = int(time.time())
    claims = {"sub": "bench-user", "iat": now, "nbf": now, "exp": now + 86400, "jti": uuid.uuid4().hex, "type": "access", "fresh": False}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_upstream() -> FakeUpstreamProcess:
    """The tests' fake upstream with the benchmark key and a small request log."""
    return FakeUpstreamProcess(key=KEY, extra_args=["--max-records", "2000"]).start()


def providers_env(upstream_base: str) -> str:
    return json.dumps(
        {
            "anthropic": {"api_key": KEY, "base_url": upstream_base, "models": ["*"]},
            "openai": {"api_key": KEY, "base_url": upstream_base + "/v1", "models": ["*"]},
        }
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A plain GET with http.client: no proxy variables can reroute it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class ProxyServer:
    """``example_app`` under gunicorn with gevent workers, configured for benchmarking."""

    def __init__(
        self,
        upstream_base: str,
        *,
        workers: int = 1,
        config: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> None:
        """``config``: :data:`DEFAULTS` (the default) or :data:`STRIPPED`; ``root``: the checkout whose
        package and example app run (another commit's, for an A/B)."""
        self.upstream_base = upstream_base
        self.workers = workers
        self.port = free_port()
        self.root = root
        self.ledger_dir = tempfile.mkdtemp(prefix="bench-ledger-")
        self.env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        self.env.update(
            {
                "LLM_PROXY_PROVIDERS": providers_env(upstream_base),
                "LLM_PROXY_USAGE_STORE": f"sqlite:///{self.ledger_dir}/usage.sqlite3",  # the default store, in a file of its own
                "WORKER_CONNECTIONS": "10000",
                "GRACEFUL_TIMEOUT": "5",  # for stop(): nothing is in flight by then
                "LLM_PROXY_PUBLIC_HEALTH": "true",  # the readiness poll carries no token
                "PYTHONPATH": str(root),
                **(DEFAULTS if config is None else config),
            }
        )
        self.env.update(extra_env or {})
        self.auth = self.env.get("LLM_PROXY_REQUIRE_AUTH") == "true"
        self.cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "example_app/gunicorn.conf.py",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{self.port}",
            "example_app.wsgi:app",
        ]
        fd, name = tempfile.mkstemp(prefix="bench-gunicorn-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None

    health_path = "/api/health"

    @property
    def command(self) -> str:
        return " ".join(self.cmd)

    def start(self, timeout: float = 30.0) -> ProxyServer:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not become ready in {timeout:.0f} s:\n{self.log()[-3000:]}")
            try:
                status, body = http_get(self.port, self.health_path, timeout=1.0)
                if status == 200 and len(self.worker_pids()) == self.workers:
                    break
                if status != 200:
                    raise RuntimeError(f"GET {self.health_path} answered {status}: {body[:300]!r}")
            except OSError:
                pass
            time.sleep(0.1)
        if self.workers > 1:
            time.sleep(1.0)  # the other workers are forked but may still be importing the app
        return self

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc is not None else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: the master stops its workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: the master and its workers
                proc.wait(5)
        self._log.close()
        self.proc = None

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FloorServer(ProxyServer):
    """``benchmarks/floor_app.py`` under the same gunicorn gevent worker: relays raw upstream bytes,
    parses nothing. What gunicorn + gevent cost per stream and per token before any proxy work."""

    health_path = "/health"

    def __init__(self, upstream_port: int, app: str = "app") -> None:
        """``app="flask_app"``: the same relay as a Flask view."""
        super().__init__(f"http://127.0.0.1:{upstream_port}", workers=1)
        self.env.update(UPSTREAM_PORT=str(upstream_port), UPSTREAM_KEY=KEY, PYTHONPATH=str(ROOT / "benchmarks"))
        self.cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "--worker-connections",
            "10000",
            "--no-control-socket",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{self.port}",
            f"floor_app:{app}",
        ]


# --- /proc ----------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the gunicorn master's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (resolution: one clock tick, usually 10 ms)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def memory_mb(pid: int) -> dict[str, float]:
    """``{"rss": VmRSS, "hwm": VmHWM}`` in MiB."""
    out = {"rss": float("nan"), "hwm": float("nan")}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``): per-scenario peaks."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def python_speed_us() -> float:
    """Microseconds for ``sum(range(1000))``, best of 5 batches: how fast this machine runs Python
    right now. Shared VMs drift (this one between about 20 and 30 us over a day), so the results
    carry it, taken at the start and the end of a run."""
    import timeit

    return min(timeit.repeat("sum(range(1000))", number=500, repeat=5)) / 500 * 1e6


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for mod in ("flask", "werkzeug", "gunicorn", "gevent", "requests", "urllib3", "orjson"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions[mod] = "not installed"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model or "unknown",
        "memory": mem,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "versions": versions,
    }
