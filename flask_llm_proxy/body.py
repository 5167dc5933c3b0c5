"""Reading an upstream response body as fast as it arrives, and noticing silence.

http.client's ``read1`` on a chunked body returns one *chunk frame* per call; Anthropic and
OpenAI send one frame per event, so that means one call, one greenlet round trip and one write
to the browser per token even when dozens are already in the socket buffer. Here the chunked
framing is decoded from whatever one socket read delivered, so every event in hand is handled
(and written) together, and nothing waits for more.

After the first ``read1`` of the socket file (which returns what header parsing left buffered)
the buffer is empty and the socket itself is read. Silence is reported as ``None`` (the caller
sends a keep-alive) and ends in a timeout after ``read_timeout``: under gevent through one shared
timer per worker (:class:`SilenceWatch`) instead of a timer per socket wait; elsewhere through
the socket's own timeout. No extra thread or greenlet per stream.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
import zlib
from typing import Any, Iterator

import requests

from ._compat import gevent_active
from .errors import NetworkError, ProxyError, UpstreamTimeout
from .transport import LeanResponse

log = logging.getLogger("flask_llm_proxy")

READ_SIZE = 65536
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder (RFC 9112 section 7.1)."""

    __slots__ = ("_buf", "_left", "_trailers", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # > 0: payload bytes due; < 0: bytes of the CRLF after a payload to skip
        self._trailers = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if not self._left and not self._buf and not self._trailers:
            # The common case of a paced stream: one socket read holds exactly one whole chunk.
            eol = data.find(b"\r\n")
            end = len(data) - 2
            if 0 < eol <= 16 and data[end:] == b"\r\n" and not data[:eol].translate(None, _HEX_DIGITS):
                size = int(data[:eol], 16)
                if size and eol + 2 + size == end:
                    return data[eol + 2 : end]
        buf = self._buf + data if self._buf else data
        out = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            left = self._left
            if left > 0:
                take = min(left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left = left - take or -2
            elif left < 0:
                skip = min(-left, end - pos)
                pos += skip
                self._left = left + skip
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                line = buf[pos:eol]
                pos = eol + 2
                if self._trailers:
                    self.done = not line  # trailer fields end with an empty line
                    continue
                digits = line.split(b";", 1)[0].rstrip(b" \t")  # "5 ;ext": whitespace before an extension
                if not digits or digits.translate(None, _HEX_DIGITS):  # int() would also take "+5", "0x5", "5_0"
                    raise NetworkError("the upstream sent a malformed chunked body")
                size = int(digits, 16)
                if not size:
                    self._trailers = True
                elif pos + size + 2 <= end:  # the payload and its CRLF are in hand: one step
                    out.append(buf[pos : pos + size])
                    pos += size + 2
                else:
                    self._left = size
        self._buf = b"" if self.done else buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)


def _parts(resp: Any) -> tuple[Any, socket.socket, bool, int | None, Any] | None:
    """(socket file, socket, chunked, length, on_complete) when the fast path applies."""
    if isinstance(resp, LeanResponse):
        if resp.conn is None:
            return None
        return resp.conn.fp, resp.conn.sock, resp.chunked, resp.length, resp.mark_complete
    raw = resp.raw
    http_resp = getattr(raw, "_fp", None)
    fp = getattr(http_resp, "fp", None)
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if fp is None or not isinstance(sock, socket.socket) or not hasattr(fp, "read1"):
        return None
    if getattr(raw, "_decoder", None) is not None or getattr(http_resp, "chunk_left", None) is not None:
        return None  # something already started reading, or the body is compressed
    enc = (resp.headers.get("content-encoding") or "identity").lower()
    if enc not in ("identity", ""):
        return None
    # http.client's own end of body: marks the response closed so the connection is reusable
    return fp, sock, bool(http_resp.chunked), http_resp.length, http_resp._close_conn


def read_error(exc: BaseException) -> ProxyError:
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, (socket.timeout, TimeoutError)):
        return UpstreamTimeout("the upstream went silent for longer than the read timeout")
    return NetworkError("the upstream connection dropped in the middle of the stream")


def read_chunks(resp: requests.Response, keepalive: float | None, read_timeout: float | None = None) -> Iterator[bytes | None]:
    """Yield body bytes as they arrive, and ``None`` after each ``keepalive`` seconds of silence.

    Raises :class:`ProxyError` on a drop, on a malformed body, or after ``read_timeout`` seconds
    without a byte. Returns at the end of the body; a chunked body's connection is then clean
    and goes back to the pool (see :func:`upstream.finish`). Returns the innermost generator
    itself (no ``yield from`` layer): every token resumes one frame less.
    """
    parts = _parts(resp)
    if parts is None:
        return _read_generic(resp, keepalive)
    fp, sock, is_chunked, remaining, on_complete = parts  # remaining None: until the connection closes
    chunked = ChunkedDecoder() if is_chunked else None
    watched = gevent_active() and bool(keepalive or read_timeout)  # nothing to watch for: the socket's own reads
    reads = _watched_reads(fp, sock, keepalive, read_timeout) if watched else _timed_reads(fp, sock, keepalive, read_timeout)
    frames = _frame(reads, chunked, remaining, on_complete)
    encoding = (resp.headers.get("content-encoding") or "").lower() if isinstance(resp, LeanResponse) else ""
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _inflate(frames)  # asked for identity, but a server may compress anyway: inflate as it arrives
    return frames


def _inflate(parts: Iterator[bytes | None]) -> Iterator[bytes | None]:
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    try:
        for part in parts:
            if part is None:
                yield None
                continue
            try:
                data = inflater.decompress(part)
            except zlib.error:
                raise NetworkError("the upstream sent a corrupt compressed body") from None
            if data:
                yield data
    finally:
        parts.close()  # type: ignore[attr-defined]


def _frame(reads: Iterator[bytes | None], chunked: ChunkedDecoder | None, remaining: int | None, on_complete: Any) -> Iterator[bytes | None]:
    """Socket bytes -> body bytes: chunked framing removed, a Content-Length honoured."""
    try:
        for data in reads:
            if data is None:
                yield None
                continue
            if not data:
                if chunked is not None or remaining:
                    raise NetworkError("the upstream connection dropped in the middle of the stream")
                on_complete()
                return
            if chunked is not None:
                payload = chunked.feed(data)
                if payload:
                    yield payload
                if chunked.done:
                    on_complete()  # body complete: the connection is clean and reusable
                    return
            else:
                if remaining is not None:
                    data = data[:remaining]
                    remaining -= len(data)
                yield data
                if remaining == 0:
                    on_complete()
                    return
    finally:
        reads.close()  # type: ignore[attr-defined]


class _Silence(BaseException):
    """Thrown into a stream's greenlet by :class:`SilenceWatch` while it waits on a silent socket.

    A BaseException, so that no ``except Exception`` on the way can swallow it.
    """


class _Reader:
    __slots__ = ("greenlet", "waiting", "wake_at")

    def __init__(self, greenlet: Any) -> None:
        self.greenlet = greenlet
        self.waiting = False
        self.wake_at = 0.0


class SilenceWatch:
    """One timer per worker process wakes the streams whose upstream went silent.

    gevent's socket timeouts allocate and arm a timer for every single wait, which is a large
    part of a paced token's cost at thousands of streams. Here a stream only writes down when it
    wants to be woken; a periodic callback in the hub throws :class:`_Silence` into the ones that
    are past that time and still blocked in a read. Precision: one tick (a tenth of the shortest
    interval asked for, at least 20 ms).
    """

    def __init__(self) -> None:
        self.readers: set[_Reader] = set()
        self._timer: Any = None
        self._tick = 1.0
        self._pid = -1

    def register(self, shortest: float) -> _Reader:
        import gevent

        tick = max(0.02, shortest / 10.0)
        if self._timer is None or self._pid != os.getpid() or tick < self._tick:
            if self._timer is not None and self._pid == os.getpid():
                self._timer.stop()
            self._tick = tick
            self._timer = gevent.get_hub().loop.timer(tick, tick, ref=False)  # never keeps a hub alive
            self._timer.start(self._check)
            self._pid = os.getpid()
        reader = _Reader(gevent.getcurrent())
        self.readers.add(reader)
        return reader

    def unregister(self, reader: _Reader) -> None:
        self.readers.discard(reader)

    def _check(self) -> None:
        now = time.monotonic()
        for reader in list(self.readers):
            if reader.waiting and now >= reader.wake_at:
                reader.waiting = False
                if reader.greenlet.dead:
                    self.readers.discard(reader)
                    continue
                try:
                    reader.greenlet.throw(_Silence())
                except Exception:  # noqa: BLE001 - the timer must survive any one stream
                    log.exception("silence watch: waking a stream failed")


WATCH = SilenceWatch()


def _watched_reads(fp: Any, sock: socket.socket, keepalive: float | None, read_timeout: float | None) -> Iterator[bytes | None]:
    """Socket reads under gevent with a keep-alive or a read timeout: no timeout on the socket, the
    shared watch wakes us instead.

    A paced stream (tokens some time apart) would find the socket empty on every second read: a
    failed ``recv`` and its exception per token before gevent waits. So once a read found nothing,
    the next ones wait for readability first and then read once; a read that fills the buffer (a
    backlog) goes back to reading first. A TLS socket hides its failed reads inside gevent's
    ``recv``: a read that took over a millisecond had to wait, and once that happened twice the
    stream waits first too, unless the TLS layer already holds decrypted bytes (``pending()``).
    A TLS read returns one record, and upstreams send one event per record: a read that did not
    wait also takes the records already queued behind it (:func:`_queued_records`), so a burst
    is decoded and written once, as a plain socket read takes it.
    """
    sock.settimeout(None)
    step = min(x for x in (keepalive, read_timeout) if x)  # after data, the nearer of keep-alive and timeout
    reader = WATCH.register(step)
    raw = getattr(sock, "_sock", None)  # the non-blocking OS socket under gevent's wrapper
    tls = raw is not None and isinstance(sock, ssl.SSLSocket)  # gevent's TLS socket
    plain = raw is not None and not tls
    if raw is not None:
        # gevent's own wait on the socket's own read watcher, as its recv() waits: close() wakes it
        wait, read_event = sock._wait, sock._read_event  # type: ignore[attr-defined]
    tls_read = getattr(sock, "_sslobj", None) if tls else None  # the non-blocking TLS object under gevent's socket
    empty = 0  # reads that found nothing: from the second on, the stream counts as paced
    paced = False
    first = True  # the first read takes what header parsing left in the file's buffer
    last_data = time.monotonic()
    reader.wake_at = last_data + step
    monotonic = time.monotonic
    try:
        while True:
            reader.waiting = True
            try:
                if first:
                    data = fp.read1(READ_SIZE)
                elif plain:
                    if paced:
                        wait(read_event)
                    while True:
                        try:
                            data = raw.recv(READ_SIZE)
                            break
                        except BlockingIOError:
                            empty += 1
                            paced = empty > 1
                            wait(read_event)
                    if len(data) == READ_SIZE:
                        paced = False  # a backlog: read first again
                elif tls:
                    started = monotonic()
                    if paced and not sock.pending():  # nothing decrypted in hand: wait for the next record
                        wait(read_event)
                    data = sock.recv(READ_SIZE)  # a record still incomplete: gevent waits for the rest
                    if monotonic() - started > 0.001:  # it had to wait: nothing was there
                        empty += 1
                        paced = empty > 1
                    else:
                        paced = False  # a backlog reads first again
                        if tls_read is not None and data and len(data) < READ_SIZE:
                            data = _queued_records(tls_read.read, data)
                else:
                    data = sock.recv(READ_SIZE)
            except _Silence:  # SilenceWatch cleared reader.waiting before throwing this
                now = monotonic()
                if read_timeout and now - last_data >= read_timeout - 1e-3:
                    raise UpstreamTimeout("the upstream went silent for longer than the read timeout") from None
                reader.wake_at = min(now + keepalive, last_data + read_timeout) if keepalive and read_timeout else now + step
                yield None
                continue
            except Exception as exc:  # noqa: BLE001 - socket, TLS and timeout errors of any kind
                raise read_error(exc) from None
            reader.waiting = False
            first = False
            last_data = monotonic()
            reader.wake_at = last_data + step
            yield data
    finally:
        WATCH.unregister(reader)


def _queued_records(read: Any, data: bytes) -> bytes:
    """``data`` and the TLS records already queued behind it, up to :data:`READ_SIZE`, without
    waiting. A paced stream never comes here (it would pay a failed read per token); whatever ends
    the queue (no more bytes, a closed or broken connection) is left for the next ``recv``."""
    parts = [data]
    size = len(data)
    while size < READ_SIZE:
        try:
            more = read(READ_SIZE - size)
        except (ssl.SSLError, OSError, ValueError):  # SSLWantReadError: the queue is empty
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _timed_reads(fp: Any, sock: socket.socket, keepalive: float | None, read_timeout: float | None) -> Iterator[bytes | None]:
    """Socket reads with the socket's own timeout (threads, or neither keep-alive nor read timeout)."""
    try:
        data = fp.read1(READ_SIZE)  # what header parsing left in the buffer, or one socket read
    except Exception as exc:  # noqa: BLE001
        raise read_error(exc) from None
    yield data
    recv, settimeout = sock.recv, sock.settimeout
    timeout_now: float | None = -1.0
    idle = silent = 0.0
    while True:
        step = read_timeout
        if keepalive:
            step = keepalive - silent if read_timeout is None else min(keepalive - silent, read_timeout - idle)
        if step != timeout_now:
            settimeout(step)
            timeout_now = step
        try:
            data = recv(READ_SIZE)
        except socket.timeout:
            if not keepalive:
                raise UpstreamTimeout("the upstream went silent for longer than the read timeout") from None
            idle += step  # type: ignore[operator]
            silent += step  # type: ignore[operator]
            if read_timeout is not None and idle >= read_timeout - 1e-6:
                raise UpstreamTimeout("the upstream went silent for longer than the read timeout") from None
            if silent >= keepalive - 1e-6:
                silent = 0.0
                yield None
            continue
        except Exception as exc:  # noqa: BLE001
            raise read_error(exc) from None
        idle = silent = 0.0
        yield data


def _read_generic(resp: requests.Response, keepalive: float | None) -> Iterator[bytes | None]:
    """Any response object with ``raw.read1`` (mocked ones in unit tests, compressed bodies).

    With a keep-alive interval, a reader thread (a greenlet under gevent) does the blocking
    reads and this generator waits on its queue with a timeout.
    """
    read1 = resp.raw.read1
    if keepalive is None:
        while True:
            try:
                chunk = read1(READ_SIZE)
            except Exception as exc:  # noqa: BLE001
                raise read_error(exc) from None
            if not chunk:
                return
            yield chunk
    q, spawn, empty = _queue_and_spawn()

    def reader() -> None:
        try:
            while True:
                chunk = read1(READ_SIZE)
                q.put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which decides
            q.put(exc)

    spawn(reader)
    get = q.get
    while True:
        try:
            item = get(timeout=keepalive)
        except empty:
            yield None
            continue
        if isinstance(item, BaseException):
            raise read_error(item) from None
        if not item:
            return
        yield item


def _queue_and_spawn() -> tuple[Any, Any, type[BaseException]]:
    if gevent_active():
        import gevent
        import gevent.queue

        return gevent.queue.Queue(), gevent.spawn, gevent.queue.Empty

    def spawn(fn: Any) -> None:
        threading.Thread(target=fn, daemon=True, name="llm-proxy-reader").start()

    return queue.SimpleQueue(), spawn, queue.Empty
