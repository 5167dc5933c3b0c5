"""How many paced streams can one gunicorn gevent worker hold when it does nothing but relay?

    python benchmarks/floor.py [--levels 250,500,1000]

Starts the fake upstream and ``floor_app.py`` under gunicorn with one gevent worker, and runs the
capacity scenario's load (20 tokens, 100 ms apart, users started over 1 s) at each level. The
upstream's raw chunked bytes are relayed unchanged (the load generator reads them in the
Anthropic format), so the numbers are the gunicorn + gevent floor under the proxy's own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import Target, raise_fd_limit, run, summarize  # noqa: E402
from servers import _free_port, children, cpu_seconds, start_upstream  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="250,500,1000")
    args = ap.parse_args(argv)
    raise_fd_limit()
    upstream = start_upstream()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(UPSTREAM_PORT=str(upstream.port), PYTHONPATH=str(HERE))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "--worker-connections", "10000", "--no-control-socket",
         "-w", "1", "-b", f"127.0.0.1:{port}", "floor_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        worker = children(proc.pid)[0]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "tokens=20 pace_ms=100"}]}).encode()
        target = Target("127.0.0.1", port, "/", body, "anthropic", {})
        run(target, requests=20, concurrency=20)
        print("| streams | gap p99 ms | TTFB p99 ms | errors | worker CPU ms/request | worker CPU us/token | holds (gap p99 <= 150 ms) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n in (int(x) for x in args.levels.split(",")):
            c0 = cpu_seconds(worker)
            result = run(target, requests=n, concurrency=n, ramp_s=1.0)
            used = cpu_seconds(worker) - c0
            s = summarize(result, 20)
            holds = s["errors"] == 0 and s["gap_p99_ms"] <= 150.0
            print(f"| {n} | {s['gap_p99_ms']:.1f} | {s['ttfb_p99_ms']:.1f} | {s['errors']} | {used / n * 1000:.2f} | {used / n / 20 * 1e6:.0f} | {'yes' if holds else 'NO'} |")
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
