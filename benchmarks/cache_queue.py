"""What the response cache and the concurrency cap ("queue") cost, and what a cache hit gains.

    python benchmarks/cache_queue.py [--rounds 12] [--per-round 50] [--tokens 20] [--first-ms 0]

Starts the fake upstream, a ``redis-server`` on loopback and the example app under gunicorn (one
gevent worker; the stripped configuration: no auth, limits or ledger, so the rows differ only by
what they measure) in several configurations, sends ``--requests`` streaming requests one after
another to each on a keep-alive connection, and prints one Markdown table: the worker's CPU per
request (from /proc: what a configuration costs, insensitive to the other processes sharing the
machine), and the client's time to the first token and to the end (p50). Then the cost in
process of the two Redis scripts a request runs when nobody waits (take a slot, give it back).

- ``no cache`` / ``memory cache`` / ``redis cache``, every request a *miss* (distinct prompts):
  what looking up, keying, copying and storing add to a request that goes upstream;
- the same caches, every request a *hit* (one prompt, stored first): a whole answer from the cache;
- ``no cap`` / ``cap (redis)`` / ``cap (memory)``, a cap nobody reaches: the queue check's cost;
- a second server with the base configuration: how far two identical ones differ (the noise).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from sections import Report  # noqa: E402
from servers import STRIPPED, ProxyServer, cpu_seconds, free_port, start_upstream  # noqa: E402

sys.path.insert(0, str(HERE.parent / "tests"))
from redis_process import RedisProcess  # noqa: E402


class Client:
    """One keep-alive connection; POSTs a contract stream and reads it to its end."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = port

    def stream(self, prompt: str, headers: str = "") -> tuple[float, float, bytes]:
        """(ms to the first token, ms to the end, the response head)."""
        body = json.dumps(
            {"model": "claude-3-5-sonnet-20241022", "max_tokens": 200, "messages": [{"role": "user", "content": prompt}]}
        ).encode()
        req = (
            f"POST /api/anthropic HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        t0 = time.perf_counter()
        self.sock.sendall(req)
        buf = b""
        first = 0.0
        while not buf.endswith(b"\r\n0\r\n\r\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed: {buf[-300:]!r}")
            buf += chunk
            if not first and b'"tokenId":0' in buf:
                first = time.perf_counter()
        end = time.perf_counter()
        if b"[DONE]" not in buf:
            raise RuntimeError(f"no [DONE]: {buf[-300:]!r}")
        return (first - t0) * 1000.0, (end - t0) * 1000.0, buf.split(b"\r\n\r\n", 1)[0]

    def close(self) -> None:
        self.sock.close()


class Scenario:
    """One configuration and one kind of request, measured in rounds between the others'."""

    def __init__(self, name: str, label: str, server: ProxyServer, expect: str | None, prompt: str | None) -> None:
        self.name, self.label, self.server, self.expect, self.prompt = name, label, server, expect, prompt
        self.worker = server.worker_pids()[0]
        self.client = Client(server.port)
        self.ttfb: list[float] = []
        self.total: list[float] = []
        self.cpu_per_round: list[float] = []  # worker CPU ms per request, each round (10 ms clock ticks: coarse)
        self.seq = 0

    def round(self, n: int, knobs: str) -> None:
        self.client.close()
        self.client = Client(self.server.port)  # gunicorn closes a connection idle for 5 s (keepalive)
        self.client.stream(f"{knobs} {self.name} connect")
        c0 = cpu_seconds(self.worker)
        for _ in range(n):
            self.seq += 1
            prompt = self.prompt or f"{knobs} {self.name} r={self.seq}"
            a, b, head = self.client.stream(prompt)
            if self.expect is not None and f"X-LLM-Proxy-Cache: {self.expect}".encode() not in head:
                raise RuntimeError(f"{self.name}: expected a {self.expect}: {head!r}")
            self.ttfb.append(a)
            self.total.append(b)
        self.cpu_per_round.append((cpu_seconds(self.worker) - c0) / n * 1000.0)


def slot_script_cost(url: str, n: int) -> dict[str, float]:
    """Microseconds per request for the slots a request nobody competes with takes and gives back,
    in this process (no gevent; redis-py with hiredis if installed), CPU and wall time: ``kept``,
    a request that takes over the slot its process's previous request kept (no Redis call);
    ``script``, one that has to run the acquire script (one round trip, which also gives back
    what was kept: here every other request needs another provider's slot); and, for scale, two
    plain PINGs (the floor of two round trips here)."""
    import redis as redis_py

    from flask_llm_proxy.concurrency.redis_slots import RedisSlots

    slots = RedisSlots(url, lease=10.0)
    slots.node.tick = 3600.0  # no tick gives kept slots back during the measurement
    client = redis_py.Redis.from_url(url)
    seq = iter(range(10**9))

    def kept() -> None:
        slots.acquire(f"t{next(seq)}", [("p:bench", 1_000_000)], time.monotonic() + 5, None, lambda: None)()

    def script() -> None:
        i = next(seq)
        slots.acquire(f"t{i}", [(f"p:bench{i % 2}", 1_000_000)], time.monotonic() + 5, None, lambda: None)()

    def pings() -> None:
        client.ping()
        client.ping()

    out = {}
    for name, fn in (("kept", kept), ("script", script), ("pings", pings)):
        for _ in range(200):
            fn()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        out[name + "_cpu"] = (time.process_time() - c0) / n * 1e6
        out[name + "_wall"] = (time.perf_counter() - t0) / n * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the table as its section of this file (benchmarks/RESULTS.md)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=50, help="requests per scenario per round")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--first-ms", type=int, default=0, help="the fake upstream's delay before its first token")
    ap.add_argument("--smoke", action="store_true", help="one round of 3 requests per row, tiny warm-ups (that it runs; no figures)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.per_round = 1, 3
    warm, script_runs = (2, 20) if args.smoke else (20, 3000)
    out = Report()

    redis = RedisProcess(free_port())
    upstream = start_upstream()
    knobs = f"tokens={args.tokens} first_ms={args.first_ms}"
    cap = {"LLM_PROXY_MAX_CONCURRENT": "100000"}
    configs: list[tuple[str, dict[str, str], list[tuple[str, str | None, bool]]]] = [
        ("no cache, no cap", {}, [("distinct prompts", None, False)]),
        ("no cache, no cap (a second server: the noise floor)", {}, [("distinct prompts", None, False)]),
        ("memory cache", {"LLM_PROXY_CACHE_URL": "memory://"}, [("misses", "miss", False), ("hits", "hit", True)]),
        ("redis cache", {"LLM_PROXY_CACHE_URL": redis.url}, [("misses", "miss", False), ("hits", "hit", True)]),
        ("cap (redis), never reached", {**cap, "LLM_PROXY_QUEUE_URL": redis.url}, [("distinct prompts", None, False)]),
        ("cap (memory), never reached", {**cap, "LLM_PROXY_QUEUE_URL": "memory://"}, [("distinct prompts", None, False)]),
        (
            "reference: rate limit (redis)",
            {"LLM_PROXY_RATE_LIMIT": "1000000/minute", "RATELIMIT_STORAGE_URI": redis.url},
            [("distinct prompts", None, False)],
        ),
    ]
    servers: list[ProxyServer] = []
    scenarios: list[Scenario] = []
    import random

    try:
        for name, env, kinds in configs:
            server = ProxyServer(upstream.base_url, config=STRIPPED, extra_env=env).start()
            servers.append(server)
            for label, expect, same in kinds:
                prompt = f"{knobs} {name} same" if same else None
                if prompt:
                    Client(server.port).stream(prompt)  # stored first
                sc = Scenario(name, label, server, expect, prompt)
                sc.round(warm, knobs + " warm")  # warm-up, not kept
                sc.ttfb.clear(), sc.total.clear(), sc.cpu_per_round.clear()
                scenarios.append(sc)
        for _ in range(args.rounds):  # interleaved, in a new order each round: drift hits all alike
            for sc in random.sample(scenarios, len(scenarios)):
                sc.round(args.per_round, knobs)
        script_us = slot_script_cost(redis.url, script_runs)
    finally:
        for server in servers:
            server.stop()
        upstream.stop()
        redis.stop()
    twins = list(zip(scenarios[0].cpu_per_round, scenarios[1].cpu_per_round, strict=True))
    base_rounds = [(x + y) / 2 for x, y in twins]  # two identical servers: their mean is the base
    n = args.rounds * args.per_round
    out(
        f"\n{n} sequential streams per row of {args.tokens} tokens (fake upstream first_ms={args.first_ms}), one gevent worker "
        f"per configuration, {args.rounds} interleaved rounds\n"
    )
    out(
        "| configuration | requests | worker CPU ms/request | vs no cache, no cap (mean of the two, paired rounds) "
        "| TTFB p50 ms | total p50 ms |"
    )
    out("| --- | --- | --- | --- | --- | --- |")
    for sc in scenarios:
        delta = statistics.fmean(a - b for a, b in zip(sc.cpu_per_round, base_rounds, strict=False))
        out(
            f"| {sc.name} | {sc.label} | {statistics.fmean(sc.cpu_per_round):.3f} | {delta:+.3f} "
            f"| {statistics.median(sc.ttfb):.2f} | {statistics.median(sc.total):.2f} |"
        )
    out(
        f"\nIn process, Redis on loopback, nobody waiting, per request: taking over the slot the process's previous "
        f"request kept costs {script_us['kept_cpu']:.0f} us of CPU ({script_us['kept_wall']:.0f} us wall); running the "
        f"acquire script instead (one round trip) {script_us['script_cpu']:.0f} us of CPU ({script_us['script_wall']:.0f} us "
        f"wall); two plain PINGs cost {script_us['pings_cpu']:.0f} us of CPU ({script_us['pings_wall']:.0f} us wall) on "
        "this machine right now"
    )
    import os

    out(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    out.save(args.out, "cache-queue", "Cache and queue (benchmarks/cache_queue.py)", "cache_queue.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
