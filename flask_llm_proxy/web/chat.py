"""``POST <prefix>/<provider>``: the contract endpoint agentary-js's ``CloudProvider`` calls.

validate -> authorize -> call the upstream -> stream. Everything that can be refused is refused
before the upstream is called, with a JSON error naming the problem. Once the upstream's first
token is in hand the answer is a :class:`~flask_llm_proxy.stream.relay.StreamBody` over
:func:`~flask_llm_proxy.stream.relay.relay` (or one JSON document for ``stream: false``).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from flask import Response, g

from .. import _json
from ..access.auth import check_model_claim, identify
from ..access.profiles import apply_to_chat, attachment_policy, check_profile_claim
from ..accounting.exchange import Exchange, RequestInfo
from ..config import ProviderConfig
from ..contract.request import ChatRequest, parse_chat_request
from ..errors import ModelNotAllowed, ProxyError, UpstreamError, scrub
from ..providers import adapter_for
from ..providers.base import Adapter, Translator, output_cap
from ..providers.mock import MockSource
from ..state import ProxyState
from ..stream.relay import (
    Items,
    collect,
    iter_items,
    peek,
    relay,
    upstream_items,
)
from .answers import contract_answer
from .fallback import fall_back
from .flow import (
    accounted,
    before_upstream,
    count_retry,
    deployment_failed,
    open_upstream,
    require_profile,
    state,
    stream_response,
)
from .json_body import read_json

log = logging.getLogger("flask_llm_proxy")


def chat(provider_name: str, profile_name: str | None = None) -> Response:
    """``POST <prefix>/<provider>``, or ``POST <prefix>/profiles/<name>`` (``profile_name``)."""
    st = state()
    with st.admission():  # counted toward LLM_PROXY_MAX_STREAMS_PER_WORKER from here
        s = st.settings
        provider = s.providers[provider_name]
        profile = s.profiles[profile_name] if profile_name else None
        identity, claims = identify(s, loader=st.hooks.identity_loader)
        require_profile(s, profile)
        g.llm_proxy_rate_headers, quota_spent = st.limits.hit_rate(identity) if st.limits else ({}, None)
        body = read_json(provider.max_body_bytes or s.max_body_bytes)
        if profile is not None:
            check_profile_claim(s, claims, profile.name)
            if isinstance(body, dict) and body.get("model") is None and profile.default_model:
                body["model"] = profile.default_model  # a profile with one model: the client may leave it out
        cap = output_cap(provider, s) or 2**31 - 1
        req = parse_chat_request(
            body,
            max_messages=provider.max_messages or s.max_messages,
            max_tokens_cap=cap,
            allow_responses=provider.type == "openai",
            policy=attachment_policy(provider, profile),
        )
        if profile is not None:
            apply_to_chat(profile, req)
        if not provider.allows(req.model):
            raise ModelNotAllowed(
                f"model {req.model!r} is not allowed on '{provider_name}'; GET {s.url_prefix}/models lists the allowed ones"
            )
        check_model_claim(s, claims, req.model)
        before_upstream(st, req, identity)
        if provider.type == "mock":
            adapter = upstream_body = None
        else:
            adapter = adapter_for(provider, req)
            upstream_body = adapter.build(req, provider, s)
        st.check_allowance(identity, quota_spent)
        info = RequestInfo(
            g.llm_proxy_request_id, identity, provider_name, req.model, g.llm_proxy_started, input_chars=req.input_size_hint()
        )
        ex = Exchange(info, keep_text=s.log_content)
    st.attach(ex, req.text_for_log)  # open from here (no yield since the admission ended)
    g.llm_proxy_exchange = ex  # its errors are accounted for by the exchange, not counted as refusals
    return accounted(ex, run, st, ex, req, provider, adapter, upstream_body)


def run(st: ProxyState, ex: Exchange, req: ChatRequest, provider: ProviderConfig, adapter: Adapter | None, upstream_body: Any) -> Response:
    """Call the upstream (or the mock, or a fallback) and answer as a stream or as one JSON document."""
    fallbacks = st.settings.fallbacks.get(provider.name, ())
    while True:
        try:
            if adapter is None or ex.request.fallback_from is not None:  # the mock; a fallback (admitted already, not cached)
                items, translator, first = _first_tokens(st, ex, provider, req, adapter, upstream_body)
            else:  # the response cache, an identical request in flight, or the upstream behind the concurrency cap
                items, translator, first = contract_answer(
                    st,
                    ex,
                    provider,
                    "contract" + adapter.path,
                    upstream_body,
                    partial(_first_tokens, st, ex, provider, req, adapter, upstream_body),
                    req.include_reasoning,
                )
            break
        except ProxyError as err:
            err.retried = err.retried or ex.call.retries > 0  # -> x-should-retry: false, whichever kind retried
            route = fall_back(st, ex, err, fallbacks, req) if fallbacks else None
            if route is None:
                raise
            count_retry(ex, err)
            fallbacks, provider, req, adapter, upstream_body = route
    if not req.stream:
        payload = collect(ex, items, translator, first)  # an error propagates to accounted()
        ex.finalize()
        return Response(_json.dumps(payload), status=200, mimetype="application/json")
    return stream_response(ex, relay(ex, items, translator, first))


def _first_tokens(
    st: ProxyState, ex: Exchange, provider: ProviderConfig, req: ChatRequest, adapter: Adapter | None, upstream_body: Any
) -> tuple[Items, Translator, tuple[Any, ...]]:
    """Open the stream and take its first batch (:func:`peek`): an error before the first token is
    still an HTTP status. Upstreams answer 200 and then fail in their first event (Anthropic's
    ``overloaded_error``): nothing reached the client yet, so that is retried like a 5xx or a 429
    status, within the same ``LLM_PROXY_MAX_RETRIES`` and backoff."""
    s = st.settings
    call = ex.call
    if adapter is None:
        source = MockSource(provider, req)
        call.translator = source.translator
        items = iter_items(source)
        return items, source.translator, peek(items)
    body = _json.dumps(upstream_body)
    while True:
        call.translator = None  # no tokens to count for an attempt the upstream refused
        resp = open_upstream(st, ex, provider, adapter, body, max_retries=s.max_retries - call.retries)  # one budget for both kinds
        translator = call.translator = adapter.translator(req.include_reasoning)
        items = upstream_items(ex, resp, translator, s.keepalive)
        try:
            return items, translator, peek(items)
        except UpstreamError as err:
            if getattr(err, "from_stream", False):
                call.translator = None  # answered as an error status: no tokens, as for one the upstream sent
                err.message = scrub(err.message, call.secrets)  # before the retry's log line
            if not getattr(err, "transient", False):
                raise
            if deployment_failed(st, ex, provider, err):  # another deployment, at once
                count_retry(ex, err)
                continue
            delay = st.retries.delay(call.retries, None)
            if delay is None:
                raise
            log.info(
                "request %s: upstream attempt %d failed in its first event (%s); retrying in %.2fs",
                ex.request.request_id,
                call.retries + 1,
                err.message,
                delay,
            )
            count_retry(ex, err)
            time.sleep(delay)
