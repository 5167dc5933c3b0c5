"""Checks of single JSON values, shared by every part of the neutral request.

Each raises :class:`InvalidRequest` with the JSON path of the value (``messages[2].content[0].text``)
so a client developer can fix the request without reading proxy code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidRequest


def fail(path: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {problem}", extra={"param": path})


def shown(v: Any, limit: int = 64) -> str:
    """A client's value quoted in an error, cut short: an error must not echo megabytes back."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def key_path(path: str, key: Any) -> str:
    """The path of an unknown key, whatever the client named it (cut short like :func:`shown`)."""
    name = str(key) if len(str(key)) <= 64 else str(key)[:64] + "..."
    return f"{path}.{name}" if path else name


def number(body: Mapping[str, Any], name: str, lo: float, hi: float, path: str | None = None) -> float | None:
    v = body.get(name)
    path = path or name
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise fail(path, f"must be a number, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise fail(path, f"must be between {lo:g} and {hi:g}, got {v}")
    return float(v)


def integer(body: Mapping[str, Any], name: str, lo: int, hi: int, path: str | None = None) -> int | None:
    v = body.get(name)
    path = path or name
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise fail(path, f"must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise fail(path, f"must be between {lo} and {hi}, got {v}")
    return v


def string(v: Any, path: str, *, allow_empty: bool = True, max_len: int | None = None) -> str:
    if not isinstance(v, str):
        raise fail(path, f"must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise fail(path, "must not be empty")
    if max_len is not None and len(v) > max_len:
        raise fail(path, f"is longer than {max_len} characters")
    return v


def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise fail(path, f"must be true or false, got {type(v).__name__}")
    return v


def only_keys(obj: Mapping[str, Any], path: str, known: Iterable[str]) -> None:
    """No field is dropped silently: a key the proxy does not know is refused, naming it."""
    for key in obj:
        if key not in known:
            raise fail(key_path(path, key), f"is not a field the proxy knows here; known: {', '.join(sorted(known))}")


def cache_control(v: Any, path: str) -> dict[str, Any]:
    """Anthropic's prompt-caching marker, ``{"type": "ephemeral", "ttl"?: "5m" | "1h"}``
    (https://docs.claude.com/en/docs/build-with-claude/prompt-caching)."""
    if not isinstance(v, Mapping) or v.get("type") != "ephemeral":
        raise fail(path, 'must be {"type": "ephemeral"} (optionally with "ttl": "5m" or "1h")')
    only_keys(v, path, ("type", "ttl"))
    if "ttl" in v and v["ttl"] not in ("5m", "1h"):
        raise fail(f"{path}.ttl", "must be '5m' or '1h'")
    return dict(v)
