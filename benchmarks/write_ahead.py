"""What write-ahead accounting costs per request, in the default configuration.

Two proxies (example_app under gunicorn, one gevent worker each, with the example app's defaults as
``servers.DEFAULTS`` has them: JWT auth, a per-user rate limit, the request log line) differ only
in ``LLM_PROXY_WRITE_AHEAD`` (on: the default; off). Each writes its usage records to its own store
of the kind measured: the default SQLite file, or one local redis-server over loopback. The client
sends short streamed requests (5 tokens, no pacing) one after another, one keep-alive connection
per proxy, alternating request by request between the two (so drift and other processes hit both
alike), and reports, per round of ``--requests`` requests each:

- latency: request sent -> last byte read (the median of the round);
- worker CPU: the proxy worker's CPU time (every thread: the SQLite thread pool too) per request,
  which includes the final record's write after the response and the once-a-second loop;

then the medians over the rounds, and the median of each round's on - off (the ``+`` columns).
The ``path`` columns measure the accounting path alone (``attach``: the in-flight record;
``finalize``: the final record), in a gevent-patched process of its own, on and off, in
alternating blocks: the same difference without gunicorn, HTTP and the client in the noise.

    python benchmarks/write_ahead.py [--stores sqlite,redis] [--rounds 20] [--requests 400]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import ProxyServer, bench_token, cpu_seconds, start_upstream  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {bench_token()}"}
BODY = json.dumps(
    {"model": "claude-3-5-sonnet-20241022", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "tokens=5"}]}
).encode()


class Client:
    """One keep-alive connection to one proxy, and the proxy worker's CPU clock."""

    def __init__(self, server: ProxyServer) -> None:
        (self.worker,) = server.worker_pids()
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def request(self) -> float:
        """One request; its latency in ms."""
        t0 = time.perf_counter()
        self.conn.request("POST", "/api/anthropic", BODY, HEADERS)
        resp = self.conn.getresponse()
        data = resp.read()
        latency = (time.perf_counter() - t0) * 1000.0
        if resp.status != 200 or b"[DONE]" not in data:
            raise RuntimeError(f"request failed: {resp.status} {data[:300]!r}")
        return latency


def interleaved(clients: dict[str, Client], n: int, first: str) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``n`` requests to each proxy, alternating request by request (so whatever else the machine
    does hits both alike): latencies (ms), and each worker's CPU ms per request."""
    order = [first] + [side for side in clients if side != first]
    latencies: dict[str, list[float]] = {side: [] for side in clients}
    cpu0 = {side: cpu_seconds(c.worker) for side, c in clients.items()}
    for _ in range(n):
        for side in order:
            latencies[side].append(clients[side].request())
    time.sleep(0.3)  # the last final writes (after the response) land in this round
    cpu = {side: (cpu_seconds(c.worker) - cpu0[side]) * 1000.0 / n for side, c in clients.items()}
    return latencies, cpu


def measure(store: str, upstream_base: str, rounds: int, requests: int, redis_url: str | None) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-wal-"))
    servers = {}
    for side, flag in (("on", "true"), ("off", "false")):
        uri = redis_url if store == "redis" else f"sqlite:///{tmp / side / 'usage.sqlite3'}"
        servers[side] = ProxyServer(upstream_base, extra_env={"LLM_PROXY_USAGE_STORE": uri or "", "LLM_PROXY_WRITE_AHEAD": flag}).start()
    try:
        clients = {side: Client(server) for side, server in servers.items()}
        interleaved(clients, 100, "on")  # warm-up: connections, caches, the store's file or socket
        lat: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(rounds):
            latencies, per_request = interleaved(clients, requests, "on" if r % 2 == 0 else "off")
            for side in clients:
                lat[side].append(statistics.median(latencies[side]))
                cpu[side].append(per_request[side])
        # each round's on - off: both sides ran request by request in the same seconds
        return {
            "lat_off": statistics.median(lat["off"]),
            "lat_on": statistics.median(lat["on"]),
            "cpu_off": statistics.median(cpu["off"]),
            "cpu_on": statistics.median(cpu["on"]),
            "lat_delta": statistics.median(a - b for a, b in zip(lat["on"], lat["off"], strict=True)),
            "cpu_delta": statistics.median(a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)),
        }
    finally:
        for s in servers.values():
            s.stop()


def path_child(uris: dict[str, str], rounds: int, n: int) -> None:
    """In a gevent-patched process of its own: the accounting path alone (``attach``, which writes
    the in-flight record, and ``finalize``, whose final write runs in its own greenlet), on and
    off, in alternating blocks; prints the CPU per request of each block as JSON."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from flask import Flask

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flask_llm_proxy import LLMProxy
    from flask_llm_proxy.accounting.exchange import Exchange, RequestInfo

    states = {}
    for side in ("on", "off"):
        app = Flask(f"bench-{side}")
        app.config.update(
            LLM_PROXY_PROVIDERS={"mock": {"type": "mock", "models": ["*"]}},
            LLM_PROXY_REQUIRE_AUTH=False,
            LLM_PROXY_RATE_LIMIT=None,
            LLM_PROXY_USAGE_STORE=uris[side],
            LLM_PROXY_WRITE_AHEAD=side == "on",
        )
        LLMProxy(app)
        states[side] = app.extensions["llm_proxy"]

    def one(st: Any, i: int) -> None:
        ex = Exchange(RequestInfo(f"bench-{i}", "bench-user", "mock", "m", time.perf_counter(), input_chars=40))
        st.attach(ex, str)
        ex.call.tokens_streamed = 5
        ex.call.complete = True
        ex.finalize()
        gevent.sleep(0)  # the final write's greenlet

    out: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds + 1):
        for side in ("on", "off") if r % 2 == 0 else ("off", "on"):
            cpu0 = time.process_time()
            for i in range(n):
                one(states[side], i)
            gevent.sleep(0.05)  # writes still waiting for Redis
            if r:  # round 0 warms up
                out[side].append((time.process_time() - cpu0) * 1000.0 / n)
    print(json.dumps(out))


def measure_path(store: str, rounds: int, n: int, redis_url: str | None) -> dict[str, float]:
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="bench-wal-path-"))
    uris = {side: redis_url if store == "redis" else f"sqlite:///{tmp / side / 'usage.sqlite3'}" for side in ("on", "off")}
    proc = subprocess.run(
        [sys.executable, __file__, "--path-child", json.dumps([uris, rounds, n])], capture_output=True, text=True, timeout=600, check=True
    )
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "cpu_off": statistics.median(cpu["off"]),
        "cpu_on": statistics.median(cpu["on"]),
        "cpu_delta": statistics.median(a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=400, help="requests per side per round")
    parser.add_argument("--path-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path_child:
        path_child(*json.loads(args.path_child))
        return 0
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    upstream = start_upstream()
    redis = None
    try:
        if "redis" in stores:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from redis_process import RedisProcess
            from servers import free_port

            redis = RedisProcess(free_port())
        rows = []
        for store in stores:
            m = measure(store, upstream.base_url, args.rounds, args.requests, redis.url if redis else None)
            m["path"] = measure_path(store, args.rounds, args.requests, redis.url if redis else None)
            rows.append((store, m))
            print(f"{store}: done", file=sys.stderr)
    finally:
        upstream.stop()
        if redis is not None:
            redis.stop()
    print(
        f"\nWrite-ahead accounting (on: the default; off), {args.rounds} rounds x {args.requests} requests per side;"
        " medians over the rounds; the + columns: the median of each round's on - off.\n"
    )
    print("| store | latency off | latency on | + latency | CPU/req off | CPU/req on | + CPU/req | path off | path on | + path |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for store, m in rows:
        p = m["path"]
        cells = [
            m["lat_off"],
            m["lat_on"],
            m["lat_delta"],
            m["cpu_off"],
            m["cpu_on"],
            m["cpu_delta"],
            p["cpu_off"],
            p["cpu_on"],
            p["cpu_delta"],
        ]
        print(f"| {store} | " + " | ".join(f"{v:.3f} ms" for v in cells) + " |")
    print(
        "\nlatency, CPU/req: end to end through gunicorn (the worker's CPU); path: the accounting path alone, in a"
        " process of its own (attach + finalize under gevent, CPU per request)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
