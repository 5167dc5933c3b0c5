"""Where an answer comes from, for both kinds of endpoint: the response cache, an identical request
streaming right now (single flight), or the upstream, behind the concurrency cap.

A cached or shared answer goes through the same encoder as a live one (the contract's relay, the
native passthrough's event bytes), so a client cannot tell them apart but by the
``X-LLM-Proxy-Cache`` header, the ``cached`` flag of the contract's last event, and the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from ..accounting.exchange import Exchange
from ..cache import LeaderGone, Turn
from ..config import ProviderConfig
from ..errors import ProxyError
from ..providers.base import Translator
from ..state import ProxyState
from ..stream.passthrough import replay
from ..stream.relay import Items, peek
from .flow import SSE_CONTENT_TYPE, stream_response


def cache_turn(st: ProxyState, ex: Exchange, provider: ProviderConfig, kind: str, body: Any) -> Turn | None:
    """The cache's decision for this request (``None``: no cache); sets ``X-LLM-Proxy-Cache``."""
    if st.cache is None or provider.type == "mock":
        return None
    turn = st.cache.turn(provider, kind, body, ex.request.identity, request.headers.get("Cache-Control"))
    g.llm_proxy_cache = turn.header
    return turn


def admit(st: ProxyState, ex: Exchange, provider: ProviderConfig) -> None:
    """Take the slots of the concurrency cap before the upstream call (waiting for them if needed)."""
    if st.gate is not None and provider.type != "mock":
        st.gate.enter(ex, provider.name, ex.request.identity, request.environ)


def _serve(ex: Exchange, turn: Turn, keepalive: float | None, reasoning: bool = False) -> tuple[Items, Translator]:
    translator = Translator(reasoning)  # the stored answer's usage and finish reason arrive with its end
    ex.call.translator = translator
    ex.call.cached = True
    return turn.chunks(translator, keepalive), translator


def _unserve(ex: Exchange) -> None:
    ex.call.translator = None
    ex.call.cached = False


def contract_answer(
    st: ProxyState,
    ex: Exchange,
    provider: ProviderConfig,
    kind: str,
    upstream_body: Any,
    live: Callable[[], tuple[Items, Translator, tuple[Any, ...]]],
    reasoning: bool = False,
) -> tuple[Items, Translator, tuple[Any, ...]]:
    """The contract endpoint's ``(items, translator, first batch)`` for the relay (see ``chat.run``).
    ``reasoning``: the client asked for the model's reasoning (its answers are kept apart: they
    hold reasoning items the others must not get)."""
    if reasoning:
        kind += "+reasoning"
    turn = cache_turn(st, ex, provider, kind, upstream_body)
    while turn is not None and turn.served:
        items, translator = _serve(ex, turn, st.settings.keepalive, reasoning)
        try:
            return items, translator, peek(items)
        except LeaderGone:  # the request it waited on ended before answering: decide again
            _unserve(ex)
            turn = cache_turn(st, ex, provider, kind, upstream_body)
    try:
        admit(st, ex, provider)
        items, translator, first = live()
    except BaseException as err:
        if turn is not None:
            turn.failed(err if isinstance(err, ProxyError) else None)
        raise
    if turn is not None and turn.leads:
        return turn.tee(ex, items, translator, first), translator, ()
    return items, translator, first


def native_answer(
    st: ProxyState,
    ex: Exchange,
    provider: ProviderConfig,
    api: str,
    body: dict[str, Any],
    stream: bool,
    live: Callable[[Turn | None], Response],
) -> Response:
    """The native endpoints' answer: replayed in the provider's own format, or ``live(turn)``."""
    kind = f"native:{api}"
    turn = cache_turn(st, ex, provider, kind, body)
    while turn is not None and turn.served:
        chunks, translator = _serve(ex, turn, st.settings.keepalive)
        try:
            if not stream:  # the upstream's JSON, whole
                data = b"".join(c for batch in chunks if batch for c in batch)
                ex.call.complete = True
                ex.finalize()
                ctype = turn.entry[0].content_type if turn.entry else turn.flight.meta.content_type  # type: ignore[union-attr]
                return Response(data, status=200, content_type=ctype or "application/json")
            first = peek(chunks)
        except LeaderGone:
            _unserve(ex)
            turn = cache_turn(st, ex, provider, kind, body)
            continue
        ctype = (turn.entry[0].content_type if turn.entry else None) or SSE_CONTENT_TYPE
        return stream_response(ex, replay(ex, chunks, api, first), ctype)
    try:
        admit(st, ex, provider)
        return live(turn)
    except BaseException as err:
        if turn is not None:
            turn.failed(err if isinstance(err, ProxyError) else None)
        raise
