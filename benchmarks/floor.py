"""How many paced streams can one gunicorn gevent worker hold when it does nothing but relay?

    python benchmarks/floor.py [--levels 250,500,1000] [--arrivals-per-s 200] [--hold-s 3]

Starts the fake upstream and ``floor_app.py`` under gunicorn with one gevent worker, and runs the
capacity scenario's load at each level (tokens 100 ms apart, streams started at a fixed rate and
long enough that all of them are open together for ``--hold-s`` seconds). The upstream's raw
chunked bytes are relayed unchanged (the load generator reads them in the Anthropic format), so
the numbers are the gunicorn + gevent floor under the proxy's own. ``run.py`` runs the same floor
beside the proxy in its capacity scenario; this script is for trying levels by hand.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import raise_fd_limit, run, summarize  # noqa: E402
from run import FULL, capacity_sizes, floor_target, holds  # noqa: E402
from servers import FloorServer, cpu_seconds, start_upstream  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="250,500,1000")
    ap.add_argument("--arrivals-per-s", type=float, default=200.0)
    ap.add_argument("--hold-s", type=float, default=3.0)
    ap.add_argument("--pace-ms", type=int, default=100)
    args = ap.parse_args(argv)
    raise_fd_limit()
    upstream = start_upstream()
    server = FloorServer(upstream.port).start()
    try:
        worker = server.worker_pids()[0]
        run(floor_target(server.port, 5, 0), requests=20, concurrency=20)
        print(
            "| streams | tokens each | gap p99 ms | TTFB p99 ms | errors | peak open | worker CPU ms/request | worker CPU us/token | holds |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for n in (int(x) for x in args.levels.split(",")):
            sz = capacity_sizes(replace(FULL["capacity"], arrivals_per_s=args.arrivals_per_s, hold_s=args.hold_s, pace_ms=args.pace_ms), n)
            ramp, tokens = sz.ramp_s, sz.tokens
            c0 = cpu_seconds(worker)
            result = run(
                floor_target(server.port, tokens, args.pace_ms),
                requests=n,
                concurrency=n,
                ramp_s=ramp,
                timeout=ramp + tokens * args.pace_ms / 1000.0 + 60,
            )
            used = cpu_seconds(worker) - c0
            s = summarize(result, tokens)
            ok = holds(s, n, sz)
            print(
                f"| {n} | {tokens} | {s['gap_p99_ms']:.1f} | {s['ttfb_p99_ms']:.1f} | {s['errors'] + s['short']} | {s['peak_streams']} "
                f"| {used / n * 1000:.2f} | {used / max(1, s['tokens']) * 1e6:.0f} | {'yes' if ok else 'NO'} |",
                flush=True,
            )
    finally:
        server.stop()
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
