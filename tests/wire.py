"""An upstream answer as ``requests`` delivers it, read from bytes the test chooses, split where the
test chooses: the real http.client + urllib3 + requests stack, with a fake socket under it.

``responses`` mocks ``HTTPAdapter.send`` with a body urllib3 reads as a plain file, so it cannot
produce a chunked body; this can, so the unit tests read every framing (chunked, Content-Length,
ended by close) exactly as the proxy reads a real upstream.
"""

from __future__ import annotations

import http.client
import io
import threading
from collections.abc import Iterable
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

FRAMINGS = ("chunked", "length", "close")


class Reads(io.RawIOBase):
    """A socket's reads: one given piece per read; a ``threading.Event`` waits for the test; then
    EOF, or ``error`` raised."""

    def __init__(self, pieces: Iterable[Any], error: BaseException | None = None) -> None:
        self.pieces = list(pieces)
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while self.pieces and isinstance(self.pieces[0], threading.Event):
            assert self.pieces.pop(0).wait(10), "the test never released the stream"
        if not self.pieces:
            if self.error is not None:
                raise self.error
            return 0
        piece = self.pieces.pop(0)
        n = min(len(buf), len(piece))
        buf[:n] = piece[:n]
        if n < len(piece):
            self.pieces.insert(0, piece[n:])
        return n


class _Socket:
    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self.reads)


def frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def response_of(
    pieces: list[Any],
    framing: str = "chunked",
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    error: BaseException | None = None,
) -> requests.Response:
    """A streamed ``requests.Response`` whose body is ``pieces`` (bytes, or events to wait for):
    one chunk per piece (``chunked``), or one socket read per piece (``length``, ``close``)."""
    body_len = sum(len(p) for p in pieces if isinstance(p, bytes))
    head = [f"HTTP/1.1 {status} X", "content-type: text/event-stream", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if framing == "chunked":
        head.append("transfer-encoding: chunked")
        reads = [frame(p) if isinstance(p, bytes) else p for p in pieces] + ([b"0\r\n\r\n"] if error is None else [])
    elif framing == "length":
        head.append(f"content-length: {body_len + (100 if error is not None else 0)}")  # an error cuts it short
        reads = list(pieces)
    else:
        head.append("connection: close")
        reads = list(pieces)
    reads.insert(0, ("\r\n".join(head) + "\r\n\r\n").encode())
    return response_over(_Socket(Reads(reads, error)))


def response_over(sock: Any) -> requests.Response:
    """The streamed ``requests.Response`` read from ``sock`` (anything with ``makefile``), layered
    as ``HTTPAdapter.send`` builds one: http.client's response under urllib3's under requests'."""
    raw = http.client.HTTPResponse(sock, method="POST")
    raw.begin()
    u3 = urllib3.HTTPResponse(
        body=raw,
        headers=urllib3.HTTPHeaderDict(raw.msg.items()),
        status=raw.status,
        version=raw.version,
        reason=raw.reason,
        preload_content=False,
        decode_content=False,
        original_response=raw,
        request_method="POST",
    )
    request = requests.Request("POST", "http://upstream.test/v1/messages").prepare()
    return HTTPAdapter().build_response(request, u3)
