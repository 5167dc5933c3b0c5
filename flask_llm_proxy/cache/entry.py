"""A complete answer as the cache keeps it, and the chunks a live answer is shared in.

Chunks are what the endpoint's encoder takes: text deltas (``str``), tool calls
(:class:`~flask_llm_proxy.providers.base.ToolCall`) and reasoning
(:class:`~flask_llm_proxy.providers.base.Reasoning`) for the contract endpoint, the upstream's
own event bytes (``bytes``) for the native ones. Encoded as frames (a type byte, a 4-byte length,
the payload) so bytes never go through JSON and decoding is a slice per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import _json
from ..providers.base import Reasoning, ToolCall, Translator

_TEXT, _TOOL, _RAW, _REASONING = 0x74, 0x63, 0x72, 0x52  # t, c, r, R
_HEAD = struct.Struct(">BI")
_MAGIC = b"LPC1"
_LEN = struct.Struct(">I")

#: finish reasons of a complete answer (neutral and the APIs' own): only those are stored
STORABLE = frozenset({"stop", "length", "tool_calls", "end_turn", "tool_use", "max_tokens", "stop_sequence", "completed"})


@dataclass
class Meta:
    """How the answer ended: what a replay's last event and the accounting need."""

    finish: str | None
    #: the upstream's counts: input, output, cache read, cache write, reasoning (of output)
    usage: tuple[int, int, int, int, int]
    content_type: str | None = None  #: native answers: the upstream's Content-Type

    @classmethod
    def of(cls, translator: Translator, content_type: str | None = None) -> Meta:
        u = translator.usage
        return cls(
            translator.finish_reason, (u.input_tokens, u.output_tokens, u.cache_read, u.cache_write, u.reasoning_tokens), content_type
        )

    def fill(self, translator: Translator) -> None:
        """Give a replay's translator the stored answer's ending (the relay reads it at the end)."""
        u = translator.usage
        u.input_tokens, u.output_tokens, u.cache_read, u.cache_write, u.reasoning_tokens = self.usage
        u.reported = True
        translator.finish_reason = self.finish
        translator.done = True

    def to_json(self) -> bytes:
        return _json.dumps({"f": self.finish, "u": list(self.usage), "ct": self.content_type})

    @classmethod
    def from_json(cls, data: bytes) -> Meta:
        d = _json.loads(data)
        usage = [int(x) for x in d["u"]] + [0] * (5 - len(d["u"]))
        return cls(d.get("f"), tuple(usage[:5]), d.get("ct"))  # type: ignore[arg-type]


def encode_chunks(chunks: Iterable[Any]) -> bytes:
    out = []
    for c in chunks:
        if type(c) is str:
            data, kind = c.encode("utf-8"), _TEXT
        elif type(c) is bytes:
            data, kind = c, _RAW
        elif type(c) is Reasoning:
            data, kind = _json.dumps(list(c)), _REASONING
        else:  # a ToolCall
            data, kind = _json.dumps([c.id, c.name, c.arguments]), _TOOL
        out.append(_HEAD.pack(kind, len(data)))
        out.append(data)
    return b"".join(out)


def decode_chunks(data: bytes) -> list[Any]:
    out: list[Any] = []
    pos, end = 0, len(data)
    view = memoryview(data)
    while pos < end:
        kind, n = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        raw = bytes(view[pos : pos + n])
        pos += n
        if kind == _TEXT:
            out.append(raw.decode("utf-8"))
        elif kind == _RAW:
            out.append(raw)
        elif kind == _REASONING:
            out.append(Reasoning(*_json.loads(raw)))
        else:
            out.append(ToolCall(*_json.loads(raw)))
    return out


def pack(meta: Meta, chunks: Iterable[Any]) -> bytes:
    head = meta.to_json()
    return _MAGIC + _LEN.pack(len(head)) + head + encode_chunks(chunks)


def unpack(blob: bytes) -> tuple[Meta, list[Any]]:
    """Raises ``ValueError`` for anything that is not an entry of this format."""
    if blob[:4] != _MAGIC:
        raise ValueError("not a cache entry of this version")
    (n,) = _LEN.unpack_from(blob, 4)
    return Meta.from_json(blob[8 : 8 + n]), decode_chunks(blob[8 + n :])


def storable(meta: Meta) -> bool:
    """A successful ending (the caller saw the final event): stop, length, tool calls."""
    return (meta.finish or "stop") in STORABLE
