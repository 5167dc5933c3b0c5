"""The per-token path: upstream events -> provider items -> contract bytes.

Read it top to bottom: :func:`upstream_items` translates the events of :class:`body.UpstreamBody`, :func:`relay` numbers the
tokens and writes them, :class:`StreamBody` guarantees the request is accounted for exactly once,
whether the stream completed, failed, or the browser went away (even before the first byte).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import chain
from typing import Any

from .. import _json
from ..accounting.exchange import Exchange
from ..errors import NetworkError, ProxyError, UpstreamError
from ..providers.base import Reasoning, ToolCall, Translator
from ..upstream.body import UpstreamBody
from .contract import DONE, PING, encode_event, encode_reasoning, encode_token

log = logging.getLogger("flask_llm_proxy")

Items = Iterator["list[Any] | None"]  # lists of str / ToolCall / Reasoning, or None for "silence: ping"
MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def upstream_items(ex: Exchange, resp: Any, translator: Translator, keepalive: float | None) -> Items:
    """The neutral endpoint's view of an upstream response: each non-empty list of items its
    events gave, ``None`` per silence. The items before an in-stream error are still handed on.
    ``close()`` (a browser that left) closes the upstream connection at once."""
    body = UpstreamBody(resp, keepalive)
    ex.call.resp = body  # closed by Exchange.finalize, should nothing ever iterate it
    return _translated(ex, body, translator)


def _translated(ex: Exchange, body: UpstreamBody, translator: Translator) -> Items:
    feed = translator.feed
    try:
        for batch in body:
            if batch is None:
                yield None
                continue
            items: list[Any] = []
            try:
                for event, data in batch:
                    items += feed(event, data)
            except ProxyError:
                if items:
                    yield items
                raise
            if items:
                body.eager = False  # the first token is out: events that came together go together
                yield items
    except MALFORMED as exc:
        raise UpstreamError(f"the upstream sent a malformed event ({type(exc).__name__})") from None
    finally:
        body.close()
        ex.call.resp = None


def _first_event(item: Any, ex: Exchange) -> bytes:
    ttfb = ex.call.ttfb_ms = round((time.perf_counter() - ex.request.started) * 1000.0, 1)
    payload: dict[str, Any] = {"token": item if isinstance(item, str) else "", "tokenId": 0, "isFirst": True, "ttfbMs": int(ttfb)}
    if isinstance(item, ToolCall):
        payload["toolCall"] = item.to_contract()
    elif isinstance(item, Reasoning):
        payload.update(item.to_contract())
    return encode_event(payload)


def _final_event(ex: Exchange, translator: Translator, token_id: int) -> bytes:
    u = translator.usage
    payload: dict[str, Any] = {
        "token": "",
        "tokenId": token_id,
        "isLast": True,
        "finishReason": translator.finish_reason or "stop",
        "usage": {"inputTokens": u.input_tokens, "outputTokens": u.output_tokens},
    }
    if ex.cost_fn is not None:
        cost = ex.cost_fn(ex.request.model, u.input_tokens, u.output_tokens, u.cache_read, u.cache_write)
        if cost is not None:
            payload["usage"]["costUsd"] = 0.0 if ex.call.cached else cost
    if translator.reasoning:  # asked for: the part of outputTokens that was reasoning, as reported
        payload["usage"]["reasoningTokens"] = u.reasoning_tokens
    if ex.call.cached:  # from the response cache: nothing was billed for this answer
        payload["cached"] = True
    if token_id == 0:
        ttfb = ex.call.ttfb_ms = round((time.perf_counter() - ex.request.started) * 1000.0, 1)
        payload["isFirst"] = True
        payload["ttfbMs"] = int(ttfb)
    return encode_event(payload) + DONE


def peek(items: Items) -> tuple[Any, ...]:
    """The stream's first batch, as ``(batch,)`` (``(None,)``: a keep-alive is due before any
    token), or ``()`` for a stream without one. An upstream error before the first token raises
    here, while the answer can still be an HTTP status and a JSON body (CONTRACT.md), which a
    client retries as it sees fit; after this, errors are ``error:`` lines in a 200 stream."""
    for batch in items:
        return (batch,)
    return ()


def relay(ex: Exchange, items: Items, translator: Translator, first: tuple[Any, ...] = ()) -> Iterator[bytes]:
    """Write each item as one contract event the moment it is in hand; never hold one back.
    ``first``: what :func:`peek` took from ``items`` already."""
    token_id = 0
    call = ex.call
    text_parts = call.text_parts
    try:
        for batch in chain(first, items) if first else items:
            if batch is None:
                yield PING
                continue
            out = []
            for item in batch:
                if token_id == 0:
                    out.append(_first_event(item, ex))
                elif type(item) is str:
                    out.append(encode_token(item, token_id))
                elif type(item) is Reasoning:
                    if item.signature is None and item.redacted is None:
                        out.append(encode_reasoning(item.text, token_id))
                    else:
                        out.append(encode_event({"token": "", "tokenId": token_id, **item.to_contract()}))
                else:
                    out.append(encode_event({"token": "", "tokenId": token_id, "toolCall": item.to_contract()}))
                if text_parts is not None and type(item) is str:
                    text_parts.append(item)
                token_id += 1
            call.tokens_streamed = token_id
            yield out[0] if len(out) == 1 else b"".join(out)
        if not translator.done:
            raise NetworkError("the upstream stream ended before its final event")
        call.complete = True
        yield _final_event(ex, translator, token_id)
    except ProxyError as err:
        err = call.fail(err)
        log.warning("stream %s failed after %d tokens: %s", ex.request.request_id, token_id, err.message)
        yield err.to_sse_line()
    except GeneratorExit:
        call.client_aborted = True
        raise
    except Exception as exc:  # noqa: BLE001 - the stream must end with an error line, not silence
        log.exception("stream %s: unexpected error", ex.request.request_id)
        told = call.fail(UpstreamError(f"proxy error: {type(exc).__name__}"))
        yield told.to_sse_line()
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        # Settled before the response ends (the server writes the end of the body after this), so
        # the user's next request already sees this one in its quota; the ledger, metrics, signal
        # and log line follow in StreamBody.close, after the last byte.
        ex.settle()


def collect(ex: Exchange, items: Items, translator: Translator, first: tuple[Any, ...] = ()) -> dict[str, Any]:
    """``stream: false``: the same upstream stream, gathered into CONTRACT.md's JSON answer."""
    text: list[str] = []
    calls: list[ToolCall] = []
    reasoning: list[Reasoning] = []
    try:
        for batch in chain(first, items):
            if batch:
                for item in batch:
                    if type(item) is str:
                        text.append(item)
                    elif type(item) is Reasoning:
                        reasoning.append(item)
                    else:
                        calls.append(item)
        if not translator.done:
            raise NetworkError("the upstream stream ended before its final event")
    finally:
        ex.call.tokens_streamed = len(text) + len(calls) + len(reasoning)  # a cut answer is estimated from these, as a stream's
        close = getattr(items, "close", None)
        if close is not None:
            close()
    ex.call.ttfb_ms = round((time.perf_counter() - ex.request.started) * 1000.0, 1)
    ex.call.complete = True
    if ex.call.text_parts is not None:
        ex.call.text_parts.extend(text)
    u = translator.usage
    body: dict[str, Any] = {
        "content": "".join(text),
        "finishReason": translator.finish_reason or "stop",
        "usage": {"promptTokens": u.input_tokens, "completionTokens": u.output_tokens, "totalTokens": u.input_tokens + u.output_tokens},
    }
    if translator.reasoning:
        body["usage"]["reasoningTokens"] = u.reasoning_tokens
        body["reasoning"], blocks = _reasoning_blocks(reasoning)
        if blocks:
            body["reasoningBlocks"] = blocks
    if calls:
        body["toolCalls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments if isinstance(c.arguments, str) else _json.dumps_str(c.arguments)},
            }
            for c in calls
        ]
        # agentary-js 3.x reads a non-streamed answer's tool calls as ``tool_calls`` (and throws
        # without them): the same list under that name too
        body["tool_calls"] = body["toolCalls"]
    return body


def _reasoning_blocks(items: list[Reasoning]) -> tuple[str, list[dict[str, Any]]]:
    """The reasoning text, and Anthropic's thinking blocks (text + signature, or redacted) as the
    assistant turn must carry them back when the conversation goes on with tool results."""
    blocks: list[dict[str, Any]] = []
    block_text: list[str] = []
    for r in items:
        block_text.append(r.text)
        if r.signature is not None:
            blocks.append({"type": "thinking", "thinking": "".join(block_text), "signature": r.signature})
            block_text = []
        elif r.redacted is not None:
            blocks.append({"type": "redacted_thinking", "data": r.redacted})
    return "".join(r.text for r in items), blocks


class StreamBody:
    """The WSGI iterable of a streamed answer.

    The relay settles the exchange at its own end, before the response's last bytes (the quota);
    ``close``, which the server calls once it wrote them (PEP 3333), finalizes it: the ledger,
    metrics, the signal and the log line then cost the stream's end nothing. A generator's
    ``finally`` does not run if the generator never started (the client left before the first
    byte): ``close`` settles it then too (``Exchange.finalize`` records once).
    """

    __slots__ = ("_gen", "_on_close")

    def __init__(self, gen: Iterator[bytes], on_close: Callable[[], None]) -> None:
        self._gen = gen
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def close(self) -> None:
        try:
            if isinstance(self._gen, Generator):  # every relay is one; a plain iterator has nothing to close
                self._gen.close()
        finally:
            self._on_close()


def iter_items(source: Iterable[list[Any]]) -> Items:
    """Adapt an in-process source (the mock provider) to the same items protocol."""
    yield from source
