"""What each layer of the token path costs per paced token, in one process, without a fake upstream.

    python benchmarks/paced_layers.py [--chunks 20000] [--rounds 5] [--out benchmarks/RESULTS.md]

``token_path.py`` reads real streams from the fake upstream, which shares the machine's two cores
with the reader: its per-token figures move by about 5 us between runs. This one takes the upstream
out. In one gevent process, over loopback TCP connections, a writer greenlet per connection sends
an Anthropic text delta as one HTTP chunk, then waits until its reader has taken it: every token
is its own network read after a wait, as a paced stream's are. Each row reads the same streams to
the layer it names, with 1 and with 200 connections at a time:

- the floor: gevent's ``socket.recv``, no HTTP at all (what any reader pays for a paced token);
- urllib3's ``HTTPResponse.stream(None)`` (http.client's buffered socket file and the chunked
  framing under it), then requests' ``iter_content(None)`` and ``iter_lines(None)``;
- this project's :func:`~flask_llm_proxy.upstream.body.body_lines` and SSE events, then
  :class:`~flask_llm_proxy.upstream.body.UpstreamBody` (the reader greenlet and its hand-over).

CPU from ``time.process_time`` per token, writer and hand-over included (the same in every row);
each connection's head is sent and its response object built before the clock starts; rows in a
new order each round, medians.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from layers import read_to
from sections import Report

ROOT = Path(__file__).resolve().parent.parent
EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" token"}}\n\n'
FRAME = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
ROWS = {
    "floor": "gevent socket.recv (no HTTP): the floor",
    "urllib3": "urllib3 HTTPResponse.stream(None)",
    "iter_content": "+ requests iter_content(None)",
    "iter_lines": "+ iter_lines(None)",
    "events": "+ body_lines (PromptRaw) and SSE events",
    "body": "+ UpstreamBody (reader greenlet, batches)",
}


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        reader = socket.create_connection(server.getsockname())
        writer, _ = server.accept()
    return writer, reader


def _stream(row: str, tokens: int) -> list[Any]:
    """A writer and a reader greenlet for one connection of ``tokens`` paced tokens."""
    from gevent.event import Event
    from wire import response_over

    out, sock = _pair()
    taken = Event()
    out.sendall(HEAD)  # the head is read before the clock starts: each row times its tokens only
    if row == "floor":
        resp = None
        sock.recv(65536)  # the head (86 bytes on loopback: one read)
    else:
        resp = response_over(sock)  # as HTTPAdapter.send builds it (tests/wire.py)

    def write() -> None:
        for _ in range(tokens):
            taken.clear()
            out.sendall(FRAME)
            taken.wait()
        out.sendall(b"0\r\n\r\n")
        out.close()

    def read() -> None:
        if resp is None:  # the floor
            for _ in range(tokens):
                sock.recv(65536)
                taken.set()
            sock.close()
            return
        items = read_to(row, resp)
        if row == "iter_lines":
            items = (line for line in items if not line)  # an event ends at its empty line
        for _ in items:
            taken.set()
        resp.close()
        sock.close()

    return [write, read]


def measure(row: str, streams: int, chunks: int) -> float:
    """CPU us per paced token, ``chunks`` tokens over ``streams`` connections at once."""
    import gevent

    per = max(1, chunks // streams)
    fns = [fn for _ in range(streams) for fn in _stream(row, per)]
    started = time.process_time()
    gevent.joinall([gevent.spawn(fn) for fn in fns], raise_error=True)
    return (time.process_time() - started) / (per * streams) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20000, help="paced tokens per row per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--streams", default="1,200", help="connections at a time, one column each")
    ap.add_argument("--out", type=Path, help="also write the table as its section of this file (benchmarks/RESULTS.md)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round (that it runs; no figures)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.chunks, args.rounds, args.streams = 400, 1, "1,20"
    from gevent import monkey

    monkey.patch_all()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    widths = [int(s) for s in args.streams.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    for streams in widths:
        for row in ROWS:
            measure(row, streams, min(args.chunks, 2000))  # warm: imports, code paths
        for _ in range(args.rounds):
            for row in random.sample(list(ROWS), len(ROWS)):
                results.setdefault((row, streams), []).append(measure(row, streams, args.chunks))
    med = {k: statistics.median(v) for k, v in results.items()}
    out = Report()
    out(
        f"\nCPU us per paced token, each layer of the token path read on its own, in one gevent process over loopback TCP "
        f"({args.chunks} tokens per row, medians of {args.rounds} rounds)\n"
    )
    out("| what reads the body | " + " | ".join(f"{n} stream{'s' if n > 1 else ''}: us per token, over the floor" for n in widths) + " |")
    out("| --- | " + " | ".join("---" for _ in widths) + " |")
    for row, label in ROWS.items():
        cells = []
        for n in widths:
            value, floor = med[(row, n)], med[("floor", n)]
            cells.append(f"{value:.1f}" if row == "floor" else f"{value:.1f}, {value - floor:+.1f}")
        out(f"| {label} | " + " | ".join(cells) + " |")
    out.save(args.out, "paced-layers", "Each layer per paced token (benchmarks/paced_layers.py)", "paced_layers.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
