"""The token path alone: the upstream call and the body read, old code against this code.

    python benchmarks/token_path.py [--base 705fd50] [--rounds 7]

``run.py --scenarios ab`` compares two whole proxies, so its figures also hold everything else that
changed between the two commits (write-ahead accounting, the cache and queue checks, profiles).
This isolates the part the ``requests`` path replaced: in one gevent process, open a streaming
POST to the fake upstream and read its events to the end, as the proxy does before translating
them: the old commit's own transport and chunked decoder (``transport.post`` + ``read_chunks`` +
its SSE decoder) against this code's ``UpstreamClient.send`` (``HTTPAdapter.send``) +
``UpstreamBody`` (``iter_lines`` through a reader greenlet). Each side runs in a fresh process
per round, sides in a new order each round, CPU from ``time.process_time``; one Markdown table:

- CPU per request for 1-token and 200-token streams (10 at a time), and the difference per
  token between the two (what one more token costs when tokens arrive in bursts);
- CPU per token of 50-token streams paced 50 ms apart (200 at a time; every token its own network
  read), and per token beyond the request's own cost (the 1-token figure taken off);
- which layer of this code's path costs what on those paced streams: each layer read on its own
  (urllib3's ``raw.stream(None)``, + requests' ``iter_content``, + ``iter_lines``, + the SSE
  events, + :class:`UpstreamBody`), and the old transport without and with its SSE decoder.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layers import read_to
from sections import Report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "bench-key"
MODES = {  # name: (concurrent streams, requests, tokens, pace ms)
    "1 token": (10, 400, 1, 0),
    "200 tokens": (10, 200, 200, 0),
    "paced 50 tokens": (200, 200, 50, 50),
}


#: the layers of this code's path, each measured on its own ("new: <layer>" sides of --layers)
LAYERS = {
    "new: urllib3 raw.stream(None)": "urllib3",
    "new: + requests iter_content(None)": "iter_content",
    "new: + iter_lines(None)": "iter_lines",
    "new: + PromptRaw and SSE events": "events",
}
LAYER_SIDES = ["old: chunks", "old", *LAYERS, "new"]


#: --smoke: the same modes, tiny (tests/test_benchmark_smoke.py: that it runs, no figures)
SMOKE = {"1 token": (2, 4, 1, 0), "200 tokens": (2, 4, 200, 0), "paced 50 tokens": (2, 4, 50, 2)}


def client(side: str, root: str, port: int, mode: str, smoke: bool = False) -> None:
    """One measurement in this process: print ``{"cpu": seconds, "requests": n, "events": n}``."""
    from gevent import monkey

    monkey.patch_all()
    sys.path.insert(0, root)
    import gevent

    concurrency, total, tokens, pace = (SMOKE if smoke else MODES)[mode]
    url = f"http://127.0.0.1:{port}/v1/messages"
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json", "accept": "text/event-stream"}
    content = f"tokens={tokens} pace_ms={pace}" if pace else f"tokens={tokens}"
    body = json.dumps(
        {"model": "claude-3-5-sonnet-20241022", "max_tokens": 4000, "stream": True, "messages": [{"role": "user", "content": content}]}
    ).encode()
    events = [0]
    if side.startswith("old"):
        from flask_llm_proxy.body import read_chunks  # type: ignore[import-not-found, unused-ignore]
        from flask_llm_proxy.sse import SSEDecoder  # type: ignore[import-not-found, unused-ignore]
        from flask_llm_proxy.upstream import UpstreamClient, finish  # type: ignore[attr-defined, unused-ignore]

        old = UpstreamClient(concurrency + 10)

        def one() -> None:
            resp, _ = old.open(
                url, headers, body, secrets=(), connect_timeout=5, read_timeout=60, max_retries=0, backoff=0.1, retry_after_max=10
            )
            feed = SSEDecoder().feed if side == "old" else len  # "old: chunks": the transport and chunked decoder only
            for chunk in read_chunks(resp, 15.0, 60.0):
                if chunk:
                    events[0] += feed(chunk) if side != "old" else len(feed(chunk))
            finish(resp)

    else:
        from flask_llm_proxy.upstream.client import Target
        from flask_llm_proxy.upstream.client import UpstreamClient as NewClient
        from flask_llm_proxy.upstream.retry import RetryPolicy

        new = NewClient(concurrency + 10)
        new.session()
        target = Target(url, headers, True, None, {})
        policy = RetryPolicy(connect_timeout=5, read_timeout=60, max_retries=0, backoff=0.1, retry_after_max=10)
        layer = LAYERS.get(side)

        def one() -> None:
            resp = new.open(target, body, secrets=(), policy=policy)
            if layer is None:  # this code's path
                for batch in read_to("body", resp):
                    events[0] += len(batch)
                return
            for _ in read_to(layer, resp):
                events[0] += 1
            resp.raw.release_conn()
            resp.close()

    def run(n: int) -> None:
        left = [n]

        def user() -> None:
            while left[0] > 0:
                left[0] -= 1
                one()

        gevent.joinall([gevent.spawn(user) for _ in range(concurrency)], raise_error=True)

    run(concurrency * 2)  # connections made, code warm
    events[0] = 0
    c0 = time.process_time()
    run(total)
    print(json.dumps({"cpu": time.process_time() - c0, "requests": total, "events": events[0]}))


def measure(side: str, root: str, port: int, mode: str, smoke: bool = False) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", side, "--root", root, "--port", str(port), "--mode", mode, *(["--smoke"] if smoke else [])],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="705fd50", help="the commit with the old transport (default: the last one before requests)")
    ap.add_argument("--out", type=Path, help="also write the table as its section of this file (benchmarks/RESULTS.md)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layer-rounds", type=int, default=3, help="rounds of the table of layers (paced streams only)")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round of each table (that it runs; no figures)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds = args.layer_rounds = 1
    out = Report()

    if args.client:
        client(args.client, args.root, args.port, args.mode, args.smoke)
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_upstream import FakeUpstreamProcess

    with tempfile.TemporaryDirectory() as tmp, FakeUpstreamProcess(key=KEY, extra_args=["--max-records", "2000"]) as up:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base, "flask_llm_proxy"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        roots = {"old": tmp, "new": str(ROOT)}
        per: dict[tuple[str, str], list[float]] = {}  # (side, mode): CPU us per request, each round
        per_event: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode in MODES:
                for side in random.sample(list(roots), 2):
                    m = measure(side, roots[side], up.port, mode, args.smoke)
                    per.setdefault((side, mode), []).append(m["cpu"] / m["requests"] * 1e6)
                    per_event.setdefault((side, mode), []).append(m["cpu"] / m["events"] * 1e6)
        layers: dict[str, list[float]] = {}  # side: CPU us per paced request, each round
        for _ in range(args.layer_rounds):
            for side in random.sample(LAYER_SIDES, len(LAYER_SIDES)):
                m = measure(side, roots["old" if side.startswith("old") else "new"], up.port, "paced 50 tokens", args.smoke)
                layers.setdefault(side, []).append(m["cpu"] / m["requests"] * 1e6)
    med = {k: statistics.median(v) for k, v in per.items()}
    delta = {mode: statistics.median(n - o for o, n in zip(per[("old", mode)], per[("new", mode)], strict=True)) for mode in MODES}
    paced_tokens, burst_tokens = MODES["paced 50 tokens"][2], MODES["200 tokens"][2]

    def marginal(side: str, mode: str, tokens: int) -> float:
        return (med[(side, mode)] - med[(side, "1 token")]) / (tokens - 1)

    out(f"\nThe token path alone (upstream call + body read to events), {args.base} vs this code, medians of {args.rounds} rounds\n")
    out(f"| measure | {args.base} | this code | added |")
    out("| --- | --- | --- | --- |")
    for mode in MODES:
        o, n = med[("old", mode)], med[("new", mode)]
        out(f"| CPU us per request, {mode} | {o:.0f} | {n:.0f} | {delta[mode]:+.0f} |")
    o, n = marginal("old", "200 tokens", burst_tokens), marginal("new", "200 tokens", burst_tokens)
    out(f"| CPU us per token beyond the first, 200-token stream | {o:.2f} | {n:.2f} | {n - o:+.2f} |")
    o, n = (statistics.median(per_event[(s, "paced 50 tokens")]) for s in ("old", "new"))
    out(f"| CPU us per event, paced (request cost included) | {o:.1f} | {n:.1f} | {n - o:+.1f} |")
    o, n = marginal("old", "paced 50 tokens", paced_tokens), marginal("new", "paced 50 tokens", paced_tokens)
    out(f"| CPU us per paced token beyond the request's own cost | {o:.1f} | {n:.1f} | {n - o:+.1f} |")
    out(
        f"\nWhich layer costs what, paced 50-token streams ({(SMOKE if args.smoke else MODES)['paced 50 tokens'][0]} at a time), medians of "
        f"{args.layer_rounds} rounds: each row reads the same streams to the layer it names (the request's own cost included)\n"
    )
    out("| what reads the body | CPU us per request | per paced token over the row above |")
    out("| --- | --- | --- |")
    previous = None
    for side in LAYER_SIDES:
        value = statistics.median(layers[side])
        step = "" if previous is None or side == "new: urllib3 raw.stream(None)" else f"{(value - previous) / paced_tokens:+.1f}"
        label = {
            "old: chunks": f"{args.base}: transport + chunked decoder",
            "old": f"{args.base}: + its SSE decoder",
            "new": "this code: + UpstreamBody (reader greenlet, batches)",
        }.get(side, side.replace("new: ", "this code: "))
        out(f"| {label} | {value:.0f} | {step} |")
        previous = value
    out.save(args.out, "token-path", "The token path alone (benchmarks/token_path.py)", "token_path.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
