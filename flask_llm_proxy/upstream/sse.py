"""An upstream's Server-Sent Events, decoded from its lines as the SSE specification says
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).

It takes complete lines (:func:`.body.body_lines`: requests' ``iter_lines``), so UTF-8 is decoded
only for whole lines and a character split by the network is never cut; it accepts multi-line
``data:``, comments and any event type, and never holds back a complete event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

Event = tuple[str, str]
"""An SSE event as ``(event type, data)``; the type is ``"message"`` when the event has none."""


_TYPES: dict[bytes, str] = {}  # event type names seen, decoded once per process


def events(lines: Iterable[bytes], raw: bool = False) -> Iterator[Any]:
    """The events of a stream of lines (line ends removed), as ``(type, data)``; with ``raw``, as
    ``(type, data, bytes)`` where the bytes are the event's own lines, re-joined with ``\\n``.

    An event ends at an empty line and is dispatched only if it has data; several ``data:``
    lines are joined with ``\\n``; a comment (``:``) or an unknown field is skipped. A line is
    decoded only once it is complete, so a character split by the network is whole here.
    """
    data: list[bytes] = []
    etype = b""
    kept: list[bytes] | None = [] if raw else None
    types = _TYPES
    for line in lines:
        if line[:6] == b"data: ":  # the usual spellings first, without partition()
            data.append(line[6:])
        elif line[:7] == b"event: ":
            etype = line[7:]
        elif not line:
            if data:
                name = types.get(etype)
                if name is None:
                    name = etype.decode("utf-8", "replace") or "message"
                    if len(types) < 256:
                        types[etype] = name
                text = (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace")
                if kept is None:
                    yield name, text
                else:
                    yield name, text, b"\n".join(kept) + b"\n\n"
                data.clear()
            if kept:
                kept.clear()  # a block without data dispatches nothing: its lines go with it
            etype = b""
            continue
        elif line[0] == 58:  # b":" - a comment, e.g. a keep-alive
            continue
        else:
            field, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                etype = value
            # "id", "retry" and unknown fields mean nothing to a proxy (a raw event keeps them)
        if kept is not None:
            kept.append(line)


def parse(body: bytes) -> list[Event]:
    """Every complete event of a whole body (tests, tools): not for the per-token path."""
    return list(events(body.splitlines()))
