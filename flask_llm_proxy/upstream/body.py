"""An upstream's streamed body as SSE events, the moment each arrives.

The lines come from requests' ``Response.iter_lines(chunk_size=None)``: every network read (every
chunk of a chunked body) is handed over as it arrives. Two known traps of ``iter_lines`` for SSE
are handled below it, in what ``iter_content`` reads (``resp.raw``, see :class:`PromptRaw`):

- a ``\\r\\n`` split between two reads would give an extra empty line, which in SSE ends an event
  early (requests issues #2431, #3980, #5540);
- a body that is not chunked (``Content-Length`` or ended by closing the connection, as some
  OpenAI-compatible servers send it) would be read in whole buffers, bunching tokens.

While the upstream is silent the stream gets a keep-alive (``None``) every ``keepalive`` seconds: the
body is read by a reader greenlet (a thread without gevent) and handed over in batches, one per
wake-up, so a burst of events is written to the browser at once; one :class:`KeepaliveClock` per
process wakes the silent ones. The read timeout (``timeout=(connect, read)``) is the socket's own
until the body starts; then the same loop watches the time since the last network read, so that
a paced token does not pay for a timer armed and cancelled on the socket for every wait.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from functools import partial
from typing import Any

import requests

from .._compat import make_wakeup, spawn_reader, take_read_timeout
from ..errors import NetworkError, ProxyError, UpstreamError, UpstreamTimeout
from .sse import Event, events

log = logging.getLogger("flask_llm_proxy")

READ_SIZE = 65536
Batch = list[Any]  # events, or (event type, data, raw bytes) triples for the native passthrough


class PromptRaw:
    """``resp.raw`` as ``iter_lines`` should read it: each read as it arrives, lines kept whole.

    requests' ``iter_content`` reads ``raw.stream(chunk_size, decode_content=True)``. Here a chunked
    body is urllib3's own ``stream(None)`` (one item per chunk); any other body is read with
    ``read1`` (what one network read delivered) instead of whole buffers. A read that starts with
    the ``\\n`` of a ``\\r\\n`` whose ``\\r`` ended the previous read loses that ``\\n``, so
    ``iter_lines`` (which splits on ``\\r``, ``\\n`` and ``\\r\\n``) never sees an empty line the
    upstream did not send. Everything else is urllib3's response, unchanged.
    """

    __slots__ = ("_raw", "_chunked", "last")

    def __init__(self, raw: Any, chunked: bool) -> None:
        self._raw = raw
        self._chunked = chunked
        self.last = time.monotonic()  #: when the last network read returned (the silence watch)

    def stream(self, amt: int | None = None, decode_content: bool | None = True) -> Iterator[bytes]:
        raw = self._raw
        reads = raw.stream(None, decode_content=True) if self._chunked else _read1(raw)
        after_cr = False
        clock = time.monotonic
        for data in reads:
            self.last = clock()
            if after_cr and data[:1] == b"\n":
                data = data[1:]
                if not data:
                    after_cr = False
                    continue
            after_cr = data[-1] == 13  # b"\r"
            yield data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _read1(raw: Any) -> Iterator[bytes]:
    read1 = raw.read1
    while True:
        data = read1(READ_SIZE, decode_content=True)
        if not data:
            return
        yield data


def body_lines(resp: requests.Response) -> Iterator[bytes]:
    """The body's lines (without their line ends) as they arrive."""
    chunked = "chunked" in resp.headers.get("transfer-encoding", "").lower()
    resp.raw = PromptRaw(resp.raw, chunked)
    return resp.iter_lines(chunk_size=None)


def read_error(exc: BaseException) -> ProxyError:
    """What a failed body read means for the client; never a message that could quote a secret."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, (requests.ConnectionError, TimeoutError)) and _timed_out(exc):
        return UpstreamTimeout(SILENT)
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return NetworkError("the upstream sent a corrupt compressed body")
    return NetworkError("the upstream connection dropped in the middle of the stream")


def _timed_out(exc: BaseException) -> bool:
    """requests turns urllib3's ReadTimeoutError inside a body into a plain ConnectionError."""
    from urllib3.exceptions import ReadTimeoutError

    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, (ReadTimeoutError, TimeoutError, requests.Timeout)):
            return True
        seen = next((a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)), None)
    return False


class UpstreamBody:
    """The events of one upstream response, in batches, with keep-alives while it is silent.

    Iterate it for ``list`` batches of events (``(type, data)``, or ``(type, data, raw bytes)``
    with ``raw=True``) and ``None`` for each ``keepalive`` of silence. :meth:`close` ends it from
    the consumer's side at any time: a body read to its end goes back to the pool, any other is
    closed, so the upstream sees the connection go and stops generating.

    Until the consumer sets :attr:`eager` to False (once its first token is out), the reader
    yields after each event: a first token that arrived together with the rest of a fast answer
    is written before the rest is parsed, not after. From then on, events that arrived together
    are handed over together.
    """

    __slots__ = (
        "resp",
        "keepalive",
        "raw",
        "silence",
        "_box",
        "_wake",
        "_started",
        "_ended",
        "_aborted",
        "_silent",
        "complete",
        "events",
        "eager",
    )

    def __init__(self, resp: requests.Response, keepalive: float | None, *, raw: bool = False) -> None:
        self.resp = resp
        self.keepalive = keepalive
        self.raw = raw
        self._box: deque[Any] = deque()
        self._wake = make_wakeup()
        self._started = False
        self._ended = False  # the reader has finished, one way or another
        self._aborted = False
        self._silent = False  # the silence watch ended it
        self.silence: float | None = None  # the read timeout, watched by CLOCK once the body streams
        self.complete = False  # the whole body was read
        self.events = 0  # how many events it held
        self.eager = True  # the reader yields after each event (see the class docstring)

    def __iter__(self) -> Iterator[Batch | None]:
        return self._batches()

    def _read(self, lines: Iterator[bytes]) -> None:
        """The reader: runs in its own greenlet (thread), owns every read and the final close."""
        box, wake = self._box, self._wake
        outcome: Any = _END
        try:
            for ev in events(lines, self.raw):
                box.append(ev)
                wake.set()
                if self.eager:
                    time.sleep(0)  # gevent's in a patched process: the consumer runs now
            if self._silent:  # the watch shut the socket: what ended the body was not the upstream
                raise UpstreamTimeout(SILENT)
            self.complete = True
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which decides
            outcome = _Failed(UpstreamTimeout(SILENT) if self._silent else exc)
        finally:
            box.append(outcome)
            self._ended = True
            wake.set()
            self._release()

    def _release(self) -> None:
        resp = self.resp
        try:
            resp.close()  # read to its end: the connection goes back to the pool; otherwise closed
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone either way
            log.debug("closing an upstream response failed", exc_info=True)

    def _batches(self) -> Iterator[Batch | None]:
        box, wake = self._box, self._wake
        self._started = True
        lines = body_lines(self.resp)  # nothing is read yet
        self.silence = take_read_timeout(self.resp)
        watched = bool(self.keepalive or self.silence)
        try:
            if watched:
                CLOCK.add(self)  # once per stream: a wait for the next token costs the clock nothing
            spawn_reader(partial(self._read, lines))
            while True:
                if not box:
                    wake.clear()
                    if not box:
                        wake.wait()
                        if not box:
                            yield None  # silence: time for a keep-alive
                            continue
                batch: Batch = []
                while box:
                    item = box.popleft()
                    if type(item) is _Failed:
                        if batch:
                            yield batch
                        raise read_error(item.exc) from None
                    if item is _END:
                        if batch:
                            yield batch
                        if not self.events and not batch:
                            raise not_a_stream(self.resp)
                        return
                    batch.append(item)
                self.events += len(batch)
                yield batch
        finally:
            if watched:
                CLOCK.discard(self)

    def close(self) -> None:
        """Stop reading now. The reader, blocked in a read, is woken by a shutdown of the socket and
        closes the response itself (closing it from here while it reads is not safe)."""
        if self._aborted:
            return
        self._aborted = True
        if not self._started:
            self._release()
            return
        if self._ended:
            return
        try:
            self.resp.raw.shutdown()  # urllib3: unblocks a read in progress on any thread
        except (ValueError, RuntimeError, OSError):  # no socket (a mocked body) or released already
            pass

    def time_out(self) -> None:
        """The silence watch: no network read for the read timeout. Ends the stream with
        :class:`UpstreamTimeout`, as the socket's own timeout would have."""
        self._silent = True
        self.close()

    def last_read(self) -> float:
        """When the last network read of the body returned (its start, before any)."""
        raw = self.resp.raw
        return raw.last if type(raw) is PromptRaw else time.monotonic()

    #: The stream's time limit (LLM_PROXY_MAX_STREAM_SECONDS) ends it from another greenlet or
    #: thread: :meth:`close` is safe there, as it only shuts the socket down under the reader.
    cut = close


SILENT = "the upstream went silent for longer than the read timeout"


def not_a_stream(resp: requests.Response) -> UpstreamError:
    """A 200 whose body ended without one event: HTTP, but not an event stream (a truncated head,
    a proxy's HTML page, an empty body)."""
    kind = resp.headers.get("content-type") or "none"
    return UpstreamError(
        f"the upstream answered 200 without an event stream (Content-Type: {kind[:100]})",
        status=502,
        type="upstream_protocol_error",
    )


class KeepaliveClock:
    """Wakes the streams that have handed over no event for their keep-alive interval, and ends
    those whose upstream sent nothing at all for their read timeout: one loop per process (a
    greenlet under gevent, else a thread) instead of a timer armed and cancelled for every wait,
    which would cost a paced token a timer object each. A stream is registered once, for its
    whole life; the loop reads the stream's own counters (events handed over, last network read),
    so the token path does nothing for it. Either is late by at most one tick (a quarter of the
    shortest interval asked for), never early: a stream asking for a shorter interval than any
    before it starts a new loop at the new tick, and the old loop ends when it next wakes, so no
    stream waits out a longer sleep begun before it came."""

    def __init__(self) -> None:
        #: each watched stream -> [events it had handed over at the last tick, when that changed or
        #: it was last woken for a keep-alive]
        self.bodies: dict[UpstreamBody, list[float]] = {}
        self.tick = 1.0
        self._pid = -1
        self._loop = 0  # the running loop's number; an older loop ends when it sees a newer one
        self._starting = threading.Lock()  # request threads (without gevent) add streams at once

    def add(self, body: UpstreamBody) -> None:
        """Watch ``body`` until :meth:`discard`: a keep-alive (its wake set with nothing to read)
        each ``body.keepalive`` without an event (an upstream that sends only comments gets them
        too), its end once its upstream sent nothing for ``body.silence``."""
        keepalive, silence = body.keepalive, body.silence
        shortest = min(keepalive or silence or 1.0, silence or keepalive or 1.0)
        if self._pid != os.getpid() or (shortest / 4 < self.tick and self.tick > 0.01):
            with self._starting:
                if self._pid != os.getpid():  # the first stream of this process (gunicorn forked it)
                    self._pid = os.getpid()
                    self.bodies.clear()
                    self._start(shortest)
                elif shortest / 4 < self.tick and self.tick > 0.01:
                    self._start(shortest)
        self.bodies[body] = [body.events, time.monotonic()]

    def _start(self, shortest: float) -> None:
        self.tick = max(0.01, shortest / 4)
        self._loop += 1
        spawn_reader(partial(self._run, self._loop, self.tick))

    def discard(self, body: UpstreamBody) -> None:
        self.bodies.pop(body, None)

    def _run(self, loop: int, tick: float) -> None:
        bodies = self.bodies
        while True:
            time.sleep(tick)  # gevent's sleep in a patched process
            if self._loop != loop:
                return  # a newer loop with a shorter tick took over
            now = time.monotonic()
            for body, seen in list(bodies.items()):
                silence, keepalive = body.silence, body.keepalive
                if silence and now - body.last_read() >= silence:
                    body.time_out()
                    continue
                if body.events != seen[0]:  # events went out since the last tick
                    seen[0], seen[1] = body.events, now
                elif keepalive and now - seen[1] >= keepalive:
                    seen[1] = now  # the next one a whole interval later
                    body._wake.set()


CLOCK = KeepaliveClock()


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def whole_body(resp: requests.Response) -> bytes:
    """A body read whole (``stream: false`` answers and error bodies); the read timeout applies
    to each read. Raises :class:`ProxyError`."""
    try:
        return resp.content
    except Exception as exc:  # noqa: BLE001 - a dropped or stalled body, like any other
        raise read_error(exc) from None
    finally:
        resp.close()


__all__ = ["Event", "PromptRaw", "UpstreamBody", "UpstreamError", "body_lines", "read_error", "whole_body"]
