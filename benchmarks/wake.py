#!/usr/bin/env python3
"""How much slower an idle process answers on this machine: the fake upstream's head latency
after the client was busy for a while between requests.

A proxy makes the chain longer: while the proxy works on a request the fake upstream (and the load
generator) sit idle, and on a VM an idle virtual CPU takes longer to wake. This measures that
effect alone, with no proxy: a gevent client (the proxy's own upstream client) sends the
latency scenario's request to the fake upstream, reads the head, and between requests spins for
0, 1.5 and 3 ms, about what the proxy's request path costs. A flat result means the machine wakes
idle processes at no cost; a rising one is part of what the latency scenario's "added" shows.

    python benchmarks/wake.py [--requests 300] [--busy-us 0,1500,3000]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests"), str(ROOT)]

from types import SimpleNamespace  # noqa: E402

from run import direct_target, prompt  # noqa: E402
from servers import start_upstream  # noqa: E402

from flask_llm_proxy.upstream.body import UpstreamBody  # noqa: E402
from flask_llm_proxy.upstream.client import UpstreamClient  # noqa: E402


def head_latency_us(port: int, requests: int, busy_us: float) -> float:
    """Median microseconds from sending the request to having the upstream's head."""
    target = direct_target("anthropic", port, prompt(20, 0))
    provider = SimpleNamespace(name="wake", base_url=f"http://127.0.0.1:{port}", headers={}, verify=True, cert=None)
    client = UpstreamClient(100)
    prepared = client.target(provider, target.path, target.headers, "text/event-stream")
    times = []
    for i in range(requests + 50):  # the first 50 warm up
        spin_until = time.perf_counter() + busy_us / 1e6
        while time.perf_counter() < spin_until:
            pass
        t0 = time.perf_counter()
        resp = client.send(prepared, target.body, "wake", (5.0, 5.0))
        t1 = time.perf_counter()
        for _ in UpstreamBody(resp, None):
            pass
        if i >= 50:
            times.append((t1 - t0) * 1e6)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--busy-us", default="0,1500,3000", help="client busy time between requests, comma separated")
    args = ap.parse_args()
    up = start_upstream()
    try:
        for busy in (float(x) for x in args.busy_us.split(",")):
            print(
                f"busy {busy / 1000:.1f} ms between requests: upstream head after {head_latency_us(up.port, args.requests, busy):.0f} us (median)"
            )
    finally:
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
