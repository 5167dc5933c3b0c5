"""What every upstream API module provides: a request builder and a stream translator.

A translator turns one upstream SSE event into zero or more *items*: a ``str`` is a text delta,
a :class:`ToolCall` a completed tool call. It also keeps the upstream's own usage counts, the
finish reason and whether the final event was seen (a stream without it was cut).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..contract.request import ChatRequest
from ..config import ProviderConfig, Settings
from ..errors import UpstreamError


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: Any

    def to_contract(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class Usage:
    __slots__ = ("input_tokens", "output_tokens", "cache_read", "cache_write", "reported")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read = 0
        self.cache_write = 0
        self.reported = False  # True once the upstream's own final counts arrived


class Translator:
    """Base for the per-API stream translators; one instance per upstream response."""

    __slots__ = ("usage", "finish_reason", "done")

    def __init__(self) -> None:
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.done = False

    def feed(self, event: str, data: str) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_usage(self, usage: dict[str, Any]) -> None:
        """Take the API's own ``usage`` object (streamed or in a whole JSON answer)."""


class Adapter:
    """One upstream API. Subclasses set ``path`` and implement the three hooks."""

    path = ""

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        raise NotImplementedError  # pragma: no cover

    def translator(self) -> Translator:
        raise NotImplementedError  # pragma: no cover


def stream_error(status: int, type_: str, message: str) -> UpstreamError:
    """An error event inside an upstream 200 stream, mapped to what the client can act on."""
    if type_ in ("overloaded_error", "overloaded"):
        err = UpstreamError(f"upstream overloaded: {message}", status=503, type="upstream_overloaded")
    elif type_ in ("rate_limit_error", "rate_limit_exceeded"):
        err = UpstreamError(f"upstream rate limit: {message}", status=429, type="upstream_rate_limited")
    else:
        err = UpstreamError(f"upstream error: {message}", status=status, type="upstream_error")
    err.from_stream = True  # type: ignore[attr-defined]  # the upstream said it inside its stream
    err.transient = type_ in TRANSIENT_STREAM_ERRORS  # type: ignore[attr-defined]
    return err


#: in-stream error types that another attempt may not meet (a request the upstream refused will)
TRANSIENT_STREAM_ERRORS = frozenset({"overloaded_error", "overloaded", "rate_limit_error", "rate_limit_exceeded", "api_error", "server_error"})


def output_cap(provider: ProviderConfig, settings: Settings) -> int | None:
    """The operator's limit on output tokens, which must hold when the client sends none."""
    caps = [x for x in (provider.max_tokens, settings.max_tokens) if x]
    return min(caps) if caps else None


def parse_arguments(text: str) -> Any:
    """Tool arguments arrive as JSON text in fragments; an empty string means no arguments."""
    from .. import _json

    if not text.strip():
        return {}
    try:
        return _json.loads(text)
    except (ValueError, TypeError):
        return text  # not JSON: hand it over as the upstream sent it
