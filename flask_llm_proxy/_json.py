"""JSON on the hot path: orjson when installed (the ``fast`` extra), the stdlib otherwise.

Everything the proxy parses or writes per token goes through these two functions, so the
choice is made once at import time instead of per call.
"""

from __future__ import annotations

import json as _std
from typing import Any

try:  # pragma: no cover - exercised by whichever interpreter runs the tests
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment, unused-ignore]  # (typed only where orjson is installed)

if _orjson is not None:
    loads = _orjson.loads

    def dumps(obj: Any) -> bytes:
        """Compact UTF-8 JSON bytes."""
        return _orjson.dumps(obj)

    def canonical(obj: Any) -> bytes:
        """Compact UTF-8 JSON with sorted keys: equal values, equal bytes (cache keys)."""
        return _orjson.dumps(obj, option=_orjson.OPT_SORT_KEYS)

else:
    loads = _std.loads  # type: ignore[assignment, unused-ignore]
    _encode = _std.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def dumps(obj: Any) -> bytes:
        """Compact UTF-8 JSON bytes."""
        return _encode(obj).encode("utf-8")

    _canonical = _std.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode

    def canonical(obj: Any) -> bytes:
        """Compact UTF-8 JSON with sorted keys: equal values, equal bytes (cache keys)."""
        return _canonical(obj).encode("utf-8")


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode("utf-8")
