"""Server-Sent Events: an incremental decoder for upstream bytes and the contract's encoder.

The decoder works on bytes and decodes UTF-8 only for complete lines: a line break is ASCII, so
a complete line never ends inside a multi-byte character, whatever way the network split it.
It accepts ``\\n``, ``\\r\\n`` and bare ``\\r`` line ends (also a ``\\r\\n`` split across two
chunks), multi-line ``data:``, comments and any event type; it never holds back a complete line.
"""
from __future__ import annotations

from typing import Iterator

from . import _json

Event = tuple[str, str]
"""An SSE event as ``(event type, data)``; the type is ``"message"`` when the event has none."""


class SSEDecoder:
    """Feed network chunks, get complete events. One instance per upstream response."""

    __slots__ = ("_buf", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = b""
        self._skip_lf = False  # the previous chunk ended in "\r": a leading "\n" belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        if b"\n" not in buf:
            self._buf = buf
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[Event] = []
        data = self._data
        for line in lines:
            if line[:6] == b"data: ":  # the usual spellings first, without partition()
                data.append(line[6:])
            elif line[:7] == b"event: ":
                self._event = line[7:]
            elif not line:
                if data:
                    events.append(
                        (
                            self._event.decode("utf-8", "replace") or "message",
                            (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace"),
                        )
                    )
                    data.clear()
                self._event = b""
            elif line[0] == 58:  # b":" - a comment, e.g. a keep-alive
                continue
            else:
                name, sep, value = line.partition(b":")
                if sep and value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    self._event = value
                # "id", "retry" and unknown fields mean nothing to a proxy
        return events

    def pending(self) -> bool:
        """True when bytes of an unfinished event are held (a stream cut in the middle)."""
        return bool(self._buf or self._data or self._event)


def complete_events(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole events: up to the end of the blank line that
    ends the last complete one (``\n\n``, ``\r\r`` or ``\r\n\r\n``), 0 when none ends here.
    A stream that mixes line ends within one blank line (``\n\r``) is cut at the next boundary."""
    if data.endswith((b"\n\n", b"\r\r", b"\n\r\n")):  # the usual read: it ends where an event ends
        return len(data)
    end = 0
    for sep in (b"\n\n", b"\r\r", b"\n\r\n"):
        i = data.rfind(sep)
        if i >= 0 and i + len(sep) > end:
            end = i + len(sep)
    return end


def iter_events(chunks: Iterator[bytes]) -> Iterator[Event]:
    """Convenience for tests and non-hot paths."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)


# --- the contract's side: what the browser receives ---------------------------------------

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def encode_token(text: str, token_id: int) -> bytes:
    """The hot path: one text delta as one ``data:`` event, built without a dict."""
    return b'data: {"token":' + _json.dumps(text) + b',"tokenId":' + str(token_id).encode() + b"}\n\n"


def encode_event(payload: dict) -> bytes:
    return b"data: " + _json.dumps(payload) + b"\n\n"
