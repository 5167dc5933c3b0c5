"""What every upstream API module provides: a request builder and a stream translator.

A translator turns one upstream SSE event into zero or more *items*: a ``str`` is a text delta,
a :class:`ToolCall` a completed tool call, a :class:`Reasoning` a piece of the model's reasoning
(only when the client asked for it: otherwise a reasoning delta gives no item at all, so the
client's stream is the one it got before reasoning existed). It also keeps the upstream's own
usage counts, the finish reason and whether the final event was seen (a stream without it was cut).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..config import ProviderConfig, Settings
from ..contract.request import ChatRequest
from ..errors import UpstreamError


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: Any

    def to_contract(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class Reasoning(NamedTuple):
    """Reasoning text (a delta), or what closes a reasoning block: Anthropic's ``signature`` of
    the block's text, or a ``redacted`` block's opaque data; both are what a client sends back
    in the assistant turn when it continues a conversation with tool calls."""

    text: str
    signature: str | None = None
    redacted: str | None = None

    def to_contract(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reasoning": self.text}
        if self.signature is not None:
            out["reasoningSignature"] = self.signature
        if self.redacted is not None:
            out["redactedReasoning"] = self.redacted
        return out


class Usage:
    __slots__ = ("input_tokens", "output_tokens", "cache_read", "cache_write", "reasoning_tokens", "hidden_deltas", "reported")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0  # reasoning tokens included: every provider bills them as output
        self.cache_read = 0
        self.cache_write = 0
        self.reasoning_tokens = 0  # of output_tokens, when the upstream says so
        self.hidden_deltas = 0  # reasoning deltas not relayed: the estimate of a cut stream counts them
        self.reported = False  # True once the upstream's own final counts arrived


class Translator:
    """Base for the per-API stream translators; one instance per upstream response.
    ``reasoning``: hand the model's reasoning on as :class:`Reasoning` items."""

    __slots__ = ("usage", "finish_reason", "done", "reasoning")

    def __init__(self, reasoning: bool = False) -> None:
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.done = False
        self.reasoning = reasoning

    def reasoning_delta(self, text: Any) -> list[Any]:
        """A reasoning delta: an item when asked for, else only counted (for a cut stream)."""
        if not text or not isinstance(text, str):
            return []
        if self.reasoning:
            return [Reasoning(text)]
        self.usage.hidden_deltas += 1
        return []

    def feed(self, event: str, data: str) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_usage(self, usage: dict[str, Any]) -> None:
        """Take the API's own ``usage`` object (streamed or in a whole JSON answer)."""


class Adapter:
    """One upstream API. Subclasses set ``path`` and implement the three hooks. ``build`` refuses
    (a 400 naming the field) what the API does not take, before any upstream call."""

    path = ""

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        raise NotImplementedError  # pragma: no cover

    def translator(self, reasoning: bool = False) -> Translator:
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
TRANSIENT_STREAM_ERRORS = frozenset(
    {"overloaded_error", "overloaded", "rate_limit_error", "rate_limit_exceeded", "api_error", "server_error"}
)


def output_cap(provider: ProviderConfig, settings: Settings) -> int | None:
    """The operator's limit on the output tokens a client may ask for."""
    caps = [x for x in (provider.max_tokens, settings.max_tokens) if x]
    return min(caps) if caps else None


def sent_cap(provider: ProviderConfig, settings: Settings) -> int | None:
    """The limit sent when the client asks for none, so leaving the field out does not lift a cost
    limit the operator set; the default ``LLM_PROXY_MAX_TOKENS`` is not sent (a model whose own
    maximum is lower, or a small local server, would refuse the request)."""
    caps = [x for x in (provider.max_tokens, settings.max_tokens if settings.max_tokens_sent else None) if x]
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
