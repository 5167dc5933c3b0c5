#!/usr/bin/env python3
"""An asyncio load generator for SSE streams: stdlib only, thousands of streams on one core.

Hand-written HTTP/1.1 over raw asyncio transports (one :class:`asyncio.Protocol` per connection,
no reader task, no ``StreamReader`` wake-up per chunk), incremental chunked decoding and a minimal
SSE scan: the body is split at blank lines (``\\n\\n``, which is what both the fake upstream and the
proxy write) and each event is classified by a byte marker, never JSON-parsed. Each virtual user
owns one keep-alive connection and reuses it for all of its requests (it reconnects only when the
server closed it).

Per request it records: when the request was written, the connect time of a fresh connection, the
arrival time of every token event (TTFB is the first one minus the write time), the status, whether
the stream ended properly, and an error text. What a "token event" is depends on ``kind``:

==============  =====================================================================
``anthropic``   an upstream ``content_block_delta`` with a ``text_delta`` (ends at ``message_stop``)
``openai``      an upstream chat chunk whose ``delta`` starts with ``content`` (ends at ``[DONE]``)
``proxy``       a contract event ``data: {"token"`` other than the ``isLast`` one (ends at ``[DONE]``;
                an ``error:`` line is an error)
==============  =====================================================================

Library use: ``result = run(Target(...), requests=100, concurrency=10)``; ``summarize(result)``.
Command line (ad-hoc checks)::

    python benchmarks/loadgen.py --url http://127.0.0.1:8000/api/anthropic --kind proxy \\
        --prompt "tokens=50 pace_ms=20" -c 20 -n 200
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import resource
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

perf = time.perf_counter

KINDS = ("anthropic", "openai", "proxy")

# parser states
_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _EOF = range(7)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


@dataclass
class Target:
    """One kind of request, sent again and again."""

    host: str
    port: int
    path: str
    body: bytes
    kind: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")

    def request_bytes(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(self.body)}",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class Result:
    """One request's record. Times are ``time.perf_counter()`` seconds."""

    __slots__ = ("user", "start", "connect_ms", "sent", "end", "times", "status", "error", "complete", "err_body")

    def __init__(self, user: int) -> None:
        self.user = user
        self.start = perf()  # before connecting (if a connection had to be made)
        self.connect_ms: float | None = None
        self.sent = 0.0  # the request was handed to the kernel
        self.end = 0.0
        self.times: list[float] = []  # arrival time of each token event
        self.status = 0
        self.error: str | None = None
        self.complete = False  # saw the stream's proper end marker
        self.err_body = b""

    @property
    def tokens(self) -> int:
        return len(self.times)

    @property
    def ttfb_ms(self) -> float | None:
        return (self.times[0] - self.sent) * 1000.0 if self.times else None


class _Conn(asyncio.Protocol):
    """One keep-alive client connection; one request in flight at a time."""

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.res: Result | None = None
        self.fut: asyncio.Future[Result] | None = None
        self.buf = b""
        self.sse = b""
        self.state = _HEAD
        self.left = 0
        self.keep_alive = True
        if kind == "anthropic":
            self.scan = self._scan_anthropic
        elif kind == "openai":
            self.scan = self._scan_openai
        else:
            self.scan = self._scan_proxy

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        res, fut = self.res, self.fut
        if res is not None and fut is not None and not fut.done():
            if self.state == _EOF and exc is None:
                self._scan_tail(res)
            elif res.error is None:
                res.error = "connection closed by the server mid-response"
            self._finish(perf())

    def data_received(self, data: bytes) -> None:
        now = perf()
        res = self.res
        if res is None:  # nothing asked: a stray byte from the server
            return
        buf = self.buf + data if self.buf else data
        while buf:
            state = self.state
            if state == _DATA:
                left = self.left
                if len(buf) <= left:
                    self._body(buf, res, now)
                    self.left = left - len(buf)
                    buf = b""
                    if self.left == 0:
                        self.state = _DATA_END
                    break
                self._body(buf[:left], res, now)
                buf = buf[left:]
                self.left = 0
                self.state = _DATA_END
            elif state == _DATA_END:
                if len(buf) < 2:
                    break
                buf = buf[2:]
                self.state = _SIZE
            elif state == _SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                try:
                    size = int(buf[:i].split(b";", 1)[0], 16)
                except ValueError:
                    return self._protocol_error(res, f"bad chunk size line {buf[:i][:40]!r}")
                buf = buf[i + 2 :]
                if size:
                    self.left = size
                    self.state = _DATA
                else:
                    self.state = _TRAILER
            elif state == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    break
                head = buf[:i]
                buf = buf[i + 4 :]
                if not self._head(head, res):
                    return
            elif state == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                line = buf[:i]
                buf = buf[i + 2 :]
                if not line:
                    self._scan_tail(res)
                    self._finish(now)
                    # anything after belongs to no request; drop it
                    buf = b""
                    break
            elif state == _LENGTH:
                left = self.left
                self._body(buf[:left], res, now)
                taken = min(left, len(buf))
                buf = buf[taken:]
                self.left = left - taken
                if self.left == 0:
                    self._scan_tail(res)
                    self._finish(now)
                    buf = b""
                    break
            else:  # _EOF: the body runs to the connection's end
                self._body(buf, res, now)
                buf = b""
        self.buf = buf

    # -- HTTP ------------------------------------------------------------------------------

    def _head(self, head: bytes, res: Result) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        try:
            res.status = int(parts[1])
        except (IndexError, ValueError):
            self._protocol_error(res, f"bad status line {lines[0][:60]!r}")
            return False
        chunked = False
        length: int | None = None
        conn_hdr = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection":
                conn_hdr = value.lower()
        self.keep_alive = conn_hdr != b"close" and not parts[0].endswith(b"/1.0")
        if res.status != 200:
            res.error = f"HTTP {res.status}"
        if chunked:
            self.state = _SIZE
        elif length is not None:
            self.state = _LENGTH
            self.left = length
            if length == 0:
                self._finish(perf())
                return False
        else:
            self.state = _EOF
            self.keep_alive = False
        return True

    def _protocol_error(self, res: Result, message: str) -> None:
        res.error = message
        self.keep_alive = False
        self._finish(perf())

    def _finish(self, now: float) -> None:
        res, fut = self.res, self.fut
        self.res = self.fut = None
        self.buf = self.sse = b""
        self.state = _HEAD
        if res is not None:
            res.end = now
            if res.error is None and not res.complete:
                res.error = "stream ended without its end marker"
            if res.error is not None and res.err_body:
                res.error += ": " + res.err_body[:200].decode("utf-8", "replace")
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
        if fut is not None and not fut.done():
            fut.set_result(res)  # type: ignore[arg-type]

    # -- SSE -------------------------------------------------------------------------------

    def _body(self, data: bytes, res: Result, now: float) -> None:
        if res.status != 200:
            if len(res.err_body) < 2000:
                res.err_body += data
            return
        sse = self.sse + data if self.sse else data
        if b"\n\n" not in sse:
            self.sse = sse
            return
        events = sse.split(b"\n\n")
        self.sse = events.pop()
        self.scan(events, res, now)

    def _scan_tail(self, res: Result) -> None:
        if self.sse.strip() and res.status == 200:
            self.scan([self.sse], res, perf())
        self.sse = b""

    @staticmethod
    def _scan_anthropic(events: list[bytes], res: Result, now: float) -> None:
        for ev in events:
            if b'"text_delta"' in ev:
                res.times.append(now)
            elif b"event: message_stop" in ev:
                res.complete = True
            elif ev.startswith(b"event: error"):
                res.error = "in-stream error: " + ev[:200].decode("utf-8", "replace")

    @staticmethod
    def _scan_openai(events: list[bytes], res: Result, now: float) -> None:
        for ev in events:
            if b'"delta":{"content":"' in ev:
                res.times.append(now)
            elif ev == b"data: [DONE]":
                res.complete = True
            elif ev.startswith(b'data: {"error"'):
                res.error = "in-stream error: " + ev[:200].decode("utf-8", "replace")

    @staticmethod
    def _scan_proxy(events: list[bytes], res: Result, now: float) -> None:
        for ev in events:
            if ev.startswith(b'data: {"token"'):
                if b'"isLast":true' not in ev:
                    res.times.append(now)
            elif ev == b"data: [DONE]":
                res.complete = True
            elif ev.startswith(b"error:"):
                res.error = "in-stream error: " + ev[:200].decode("utf-8", "replace")

    # -- driving ---------------------------------------------------------------------------

    def send(self, data: bytes, res: Result) -> asyncio.Future[Result]:
        self.res = res
        self.fut = fut = self.loop.create_future()
        self.buf = self.sse = b""
        self.state = _HEAD
        res.sent = perf()
        assert self.transport is not None
        self.transport.write(data)
        return fut


@dataclass
class LoadResult:
    results: list[Result]
    wall_s: float
    cpu_s: float  # this process's CPU (user + system) during the run
    kind: str
    concurrency: int
    lag_ms: list[float] = field(default_factory=list)  # event-loop lateness, sampled every 10 ms


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run_load(
    target: Target, *, requests: int, concurrency: int, ramp_s: float = 0.0, timeout: float = 60.0, connect_timeout: float = 10.0
) -> LoadResult:
    """``concurrency`` virtual users share ``requests`` requests; user ``u`` starts at
    ``u * ramp_s / concurrency`` seconds and sends its requests one after another on its own
    keep-alive connection."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, _ctx: None)  # connection resets are recorded, not logged
    payload = target.request_bytes()
    results: list[Result] = []
    counter = [0]
    concurrency = max(1, min(concurrency, requests))

    async def user(uid: int) -> None:
        if ramp_s:
            await asyncio.sleep(uid * ramp_s / concurrency)
        conn: _Conn | None = None
        while counter[0] < requests:
            counter[0] += 1
            res = Result(uid)
            results.append(res)
            if conn is None or conn.closed:
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(lambda: _Conn(target.kind, loop), target.host, target.port),
                        connect_timeout,
                    )
                except (OSError, asyncio.TimeoutError) as exc:
                    res.error = f"connect failed: {type(exc).__name__}: {exc}"
                    res.end = perf()
                    conn = None
                    await asyncio.sleep(0.05)
                    continue
                res.connect_ms = (perf() - res.start) * 1000.0
            fut = conn.send(payload, res)
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                res.error = f"timed out after {timeout:.0f} s ({len(res.times)} tokens)"
                res.end = perf()
                conn.res = conn.fut = None
                if conn.transport is not None:
                    conn.transport.abort()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    lag: list[float] = []

    async def monitor() -> None:
        """How late the loop wakes a 10 ms timer: high values mean this harness is the bottleneck."""
        while True:
            t = perf()
            await asyncio.sleep(0.01)
            lag.append((perf() - t - 0.01) * 1000.0)

    mon = asyncio.ensure_future(monitor())
    # no cyclic-GC pauses while measuring: one gen-2 pass over thousands of connections stalls
    # every stream at once and shows up as a gap in all of them
    gc.collect()
    gc.freeze()
    gc.disable()
    cpu0, t0 = _cpu(), perf()
    try:
        await asyncio.gather(*(user(u) for u in range(concurrency)))
    finally:
        wall = perf() - t0
        cpu = _cpu() - cpu0
        gc.enable()
        gc.unfreeze()
    mon.cancel()
    await asyncio.sleep(0)  # let the transports' close callbacks run
    return LoadResult(results, wall, cpu, target.kind, concurrency, lag)


def run(target: Target, **kwargs: Any) -> LoadResult:
    """Synchronous wrapper: a fresh event loop per run."""
    return asyncio.run(run_load(target, **kwargs))


# --- statistics -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(lr: LoadResult, expected_tokens: int | None = None) -> dict[str, Any]:
    """The numbers a scenario reports, from one run's records."""
    rs = lr.results
    ok = [r for r in rs if r.error is None]
    if expected_tokens is not None:
        short = [r for r in ok if r.tokens != expected_tokens]
    else:
        short = []
    errors = [r for r in rs if r.error is not None]
    ttfb = [r.ttfb_ms for r in rs if r.ttfb_ms is not None]
    gaps = [(b - a) * 1000.0 for r in rs for a, b in zip(r.times, r.times[1:], strict=False)]
    tokens = sum(r.tokens for r in rs)
    sent = [r.sent for r in rs if r.sent]
    ends = [r.end for r in rs if r.end]
    span = (max(ends) - min(sent)) if sent and ends else lr.wall_s
    connects = [r.connect_ms for r in rs if r.connect_ms is not None]
    # the most streams open at once (request written .. response finished)
    edges = sorted([(r.sent, 1) for r in rs if r.sent] + [(r.end, -1) for r in rs if r.sent and r.end])
    peak = cur = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    samples: dict[str, int] = {}
    for r in errors:
        key = (r.error or "")[:160]
        samples[key] = samples.get(key, 0) + 1
    return {
        "requests": len(rs),
        "ok": len(ok) - len(short),
        "errors": len(errors),
        "short": len(short),
        "error_samples": sorted(samples.items(), key=lambda kv: -kv[1])[:5],
        "tokens": tokens,
        "span_s": span,
        "wall_s": lr.wall_s,
        "tokens_per_s": tokens / span if span > 0 else math.nan,
        "ttfb_p50_ms": percentile(ttfb, 0.50),
        "ttfb_p99_ms": percentile(ttfb, 0.99),
        "ttfb_max_ms": max(ttfb) if ttfb else math.nan,
        "gap_p50_ms": percentile(gaps, 0.50),
        "gap_p99_ms": percentile(gaps, 0.99),
        "gap_max_ms": max(gaps) if gaps else math.nan,
        "connect_p99_ms": percentile(connects, 0.99),
        "peak_streams": peak,
        "loadgen_cpu_s": lr.cpu_s,
        "loadgen_lag_p99_ms": percentile(lr.lag_ms, 0.99),
    }


# --- command line ---------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/api/anthropic")
    p.add_argument("--kind", choices=KINDS, default="proxy")
    p.add_argument("--prompt", default="tokens=20")
    p.add_argument("--model", default="claude-3-5-sonnet-20241022")
    p.add_argument("--key", default="bench-key", help="API key for direct kinds")
    p.add_argument("-c", "--concurrency", type=int, default=10)
    p.add_argument("-n", "--requests", type=int, default=100)
    p.add_argument("--ramp", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    u = urllib.parse.urlsplit(a.url)
    body: dict[str, Any] = {"model": a.model, "messages": [{"role": "user", "content": a.prompt}], "max_tokens": 1000}
    headers: dict[str, str] = {}
    if a.kind == "anthropic":
        body["stream"] = True
        headers = {"x-api-key": a.key, "anthropic-version": "2023-06-01"}
    elif a.kind == "openai":
        body.update(stream=True, stream_options={"include_usage": True})
        headers = {"Authorization": f"Bearer {a.key}"}
    raise_fd_limit()
    target = Target(u.hostname or "127.0.0.1", u.port or 80, u.path or "/", json.dumps(body).encode(), a.kind, headers)
    s = summarize(run(target, requests=a.requests, concurrency=a.concurrency, ramp_s=a.ramp, timeout=a.timeout))
    print(json.dumps(s, indent=2, default=str))
    return 1 if s["errors"] else 0


if __name__ == "__main__":
    sys.exit(_main())
