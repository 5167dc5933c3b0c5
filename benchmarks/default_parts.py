"""What each default of the example app costs a request at concurrency 1, timed inside the worker.

    python benchmarks/default_parts.py [--rounds 7] [--requests 400] [--out benchmarks/RESULTS.md]

``run.py --scenarios defaults`` measures each default from the outside, as the time to first byte
it adds against a stripped configuration; on this machine those differences are a few tenths of a
millisecond each and move by as much between runs. This script times the parts themselves, in the
worker that runs them (``parts_app.py``: the example app with a stopwatch on each part), so the
gap between the defaults and the stripped configuration can be read part by part: what comes
before the first byte (the JWT check, the rate limit, the in-flight record) and what comes after
the last one (the final ledger write, the log line). Two servers, one gevent worker each, with
``servers.DEFAULTS`` and ``servers.STRIPPED``, run interleaved rounds of short streamed requests
(20 tokens, no pacing) one after another; medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from sections import Report  # noqa: E402
from servers import DEFAULTS, STRIPPED, ProxyServer, bench_token, cpu_seconds, http_get, start_upstream  # noqa: E402

BODY = json.dumps(
    {"model": "claude-3-5-sonnet-20241022", "max_tokens": 1000, "messages": [{"role": "user", "content": "tokens=20"}]}
).encode()
#: (label, part, when): the parts parts_app.py times, in the order a request meets them
PARTS = [
    ("JWT check (`identify`)", "identify", "before the first byte"),
    ("- of it, flask-jwt-extended's `verify_jwt_in_request`", "verify_jwt_in_request", ""),
    ("- of that, PyJWT's `decode` / `get_unverified_header`", "pyjwt", ""),
    ("rate limit hit (flask-limiter's memory storage)", "hit_rate", "before the first byte"),
    ("in-flight record (SQLite) and in-flight gauge", "started", "before the first byte"),
    ("final ledger write, metrics, `usage_recorded`", "record", "after the last byte"),
    ("request log line (INFO)", "log_line", "after the last byte"),
]


def _server(upstream: Any, config: dict[str, str]) -> ProxyServer:
    server = ProxyServer(upstream.base_url, config=config)
    server.env["PYTHONPATH"] = f"{server.root / 'benchmarks'}:{server.root}"
    server.cmd[-1] = "parts_app:app"
    return server.start()


def _round(server: ProxyServer, requests: int, token: str) -> dict[str, Any]:
    (worker,) = server.worker_pids()
    headers = {"Authorization": f"Bearer {token}"} if server.auth else {}
    target = loadgen.Target("127.0.0.1", server.port, "/api/anthropic", BODY, "proxy", headers)
    http_get(server.port, "/_parts")  # start over
    cpu = cpu_seconds(worker)
    summary = loadgen.summarize(loadgen.run(target, requests=requests, concurrency=1, ramp_s=0, timeout=60))
    cpu = cpu_seconds(worker) - cpu
    if summary["errors"]:
        raise RuntimeError(f"{summary['errors']} requests failed")
    status, body = http_get(server.port, "/_parts")
    assert status == 200, body
    spent = json.loads(body)
    out: dict[str, Any] = {"ttfb": summary["ttfb_p50_ms"], "cpu": cpu / requests * 1e6}
    for part, (calls, seconds) in spent.items():
        out[part] = seconds / requests * 1e6
        out[part + " calls"] = calls / requests
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400, help="requests per round and server")
    parser.add_argument("--out", type=Path, default=None, help="write the table into this RESULTS.md")
    args = parser.parse_args(argv)
    upstream = start_upstream()
    token = bench_token()
    servers = {"defaults": _server(upstream, DEFAULTS), "stripped": _server(upstream, STRIPPED)}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            _round(server, 200, token)  # warm up
        for i in range(args.rounds):
            for name in sorted(servers, reverse=i % 2 == 1):
                rounds[name].append(_round(servers[name], args.requests, token))
    finally:
        for server in servers.values():
            server.stop()
        upstream.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in rounds[name])

    def paired(key: str) -> float:
        return statistics.median(d.get(key, 0.0) - s.get(key, 0.0) for d, s in zip(rounds["defaults"], rounds["stripped"], strict=True))

    report = Report()
    report(
        f"Short streamed requests (20 tokens, no pacing) at concurrency 1, {args.requests} per round and server,"
        f" {args.rounds} interleaved rounds; microseconds per request, timed inside the worker (`parts_app.py`); medians"
        " of the rounds' means"
    )
    report()
    report("| part | when | defaults | stripped |")
    report("| --- | --- | --- | --- |")
    before = 0.0
    for label, part, when in PARTS:
        value = median("defaults", part)
        if part == "pyjwt":
            label = f"{label}, {median('defaults', part + ' calls'):g} calls"
        report(f"| {label} | {when} | {value:.0f} | {median('stripped', part):.0f} |")
        if when == "before the first byte":
            before += value - median("stripped", part)
    hooks = sorted({k for r in rounds["defaults"] + rounds["stripped"] for k in r if k.startswith("hook ") and not k.endswith(" calls")})
    for part in hooks:
        report(f"| request hook: {part[5:]} | | {median('defaults', part):.0f} | {median('stripped', part):.0f} |")
    for gen in ("gc0", "gc1", "gc2"):
        runs = " / ".join(f"{median(name, gen + ' calls'):.3g}" for name in ("defaults", "stripped"))
        report(
            f"| garbage collection, generation {gen[2]} ({runs} runs per request) | | {median('defaults', gen):.0f} | {median('stripped', gen):.0f} |"
        )
    report(
        f"| server: call to first body chunk (the upstream's answer included) | | {median('defaults', 'first chunk'):.0f} | {median('stripped', 'first chunk'):.0f} |"
    )
    report(
        f"| server: the body's `close()` (the record, the log line) | after the last byte | {median('defaults', 'close'):.0f} | {median('stripped', 'close'):.0f} |"
    )
    report(f"| the parts before the first byte, defaults - stripped | | {before:+.0f} | |")
    report(f"| server: call to first body chunk, defaults - stripped | | {paired('first chunk'):+.0f} | |")
    report(f"| client: time to first byte p50, defaults - stripped | | {paired('ttfb') * 1000:+.0f} | |")
    report(f"| worker CPU per request (/proc, 10 ms ticks), defaults - stripped | | {paired('cpu'):+.0f} | |")
    report()
    report(
        "Stripped: no JWT (`identify` reads the client address), no rate limit, no usage store, warnings only."
        " The parts do not add up to the measured differences: the defaults run more code per request, which also"
        " makes the code both configurations share slower (colder caches), and on two cores the worker, the fake"
        " upstream and the load generator take turns."
    )
    report.save(
        args.out, "default-parts", "What each default costs inside the worker (benchmarks/default_parts.py)", "default_parts.py", argv
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
