"""Native-format endpoints for the official SDKs, after the same gatekeeping as the contract one.

``POST <prefix>/<name>/v1/messages`` (Anthropic) and ``<prefix>/<name>/v1/chat/completions`` /
``/v1/responses`` (OpenAI) take and return the provider's own format, so ``anthropic.Anthropic(
base_url=".../api/anthropic", api_key=<JWT>)`` and ``openai.OpenAI(base_url=".../api/openai/v1",
api_key=<JWT>)`` work unchanged. The body is filtered to the API's known fields; the upstream's
events are relayed as they come (:mod:`~flask_llm_proxy.stream.passthrough`) while the same
translators read the usage for accounting. Errors use the provider's error shape so the SDKs raise
their usual exception classes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Response, g

from .. import _json
from ..access.auth import check_model_claim, identify
from ..access.profiles import apply_to_native, attachment_policy, check_profile_claim
from ..accounting.exchange import Exchange, RequestInfo
from ..cache import Turn
from ..config import ProviderConfig
from ..contract.blocks import check_native
from ..contract.request import valid_model_name
from ..contract.responses_form import FORWARDED as RESPONSES_FIELDS
from ..errors import InvalidRequest, ModelNotAllowed, UpstreamError
from ..providers.anthropic import AnthropicAdapter
from ..providers.base import Adapter, Translator, output_cap
from ..providers.openai import ChatCompletionsAdapter
from ..providers.responses import ResponsesAdapter
from ..state import ProxyState
from ..stream.passthrough import passthrough
from ..stream.relay import MALFORMED
from ..upstream.body import UpstreamBody, whole_body
from .answers import native_answer
from .flow import (
    accounted,
    before_upstream,
    open_upstream,
    require_profile,
    state,
    stream_response,
)
from .json_body import read_json

log = logging.getLogger("flask_llm_proxy")

#: API -> (the adapter: upstream path, auth headers, translator; the request fields forwarded;
#: the max-tokens field names)
APIS: dict[str, tuple[Adapter, frozenset[str], tuple[str, ...]]] = {
    "messages": (
        AnthropicAdapter(),
        frozenset(
            {
                "model",
                "messages",
                "system",
                "max_tokens",
                "metadata",
                "stop_sequences",
                "stream",
                "temperature",
                "top_k",
                "top_p",
                "tools",
                "tool_choice",
                "thinking",
                "output_config",
            }
        ),
        ("max_tokens",),
    ),
    "chat": (
        ChatCompletionsAdapter(),
        frozenset(
            {
                "model",
                "messages",
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "top_p",
                "n",
                "stop",
                "seed",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "response_format",
                "stream",
                "stream_options",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "logprobs",
                "top_logprobs",
                "reasoning_effort",
            }
        ),
        ("max_tokens", "max_completion_tokens"),
    ),
    "responses": (
        ResponsesAdapter(),
        frozenset({"model", "stream", *RESPONSES_FIELDS}),
        ("max_output_tokens",),
    ),
}


def _check_body(api: str, body: Any, provider: Any, settings: Any) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("body: must be a JSON object")
    _, allowed, mt_fields = APIS[api]
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise InvalidRequest("model: is required (a string)", extra={"param": "model"})
    if not valid_model_name(model):
        raise InvalidRequest("model: may not contain spaces, line breaks or other invisible characters", extra={"param": "model"})
    items = body.get("input") if api == "responses" else body.get("messages")
    if api == "responses":
        if not isinstance(items, (str, list)) or not items:
            raise InvalidRequest("input: must be a non-empty string or list", extra={"param": "input"})
    elif not isinstance(items, list) or not items:
        raise InvalidRequest("messages: must be a non-empty list", extra={"param": "messages"})
    max_messages = provider.max_messages or settings.max_messages
    if isinstance(items, list) and len(items) > max_messages:
        raise InvalidRequest(f"messages: at most {max_messages} are allowed", extra={"param": "messages"})
    cap = output_cap(provider, settings) or 2**31 - 1
    for name in mt_fields:
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= cap):
            raise InvalidRequest(f"{name}: must be an integer between 1 and {cap}", extra={"param": name})
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: must be a boolean", extra={"param": "stream"})
    if api == "messages" and body.get("max_tokens") is None:
        raise InvalidRequest("max_tokens: is required", extra={"param": "max_tokens"})
    out = {k: v for k, v in body.items() if k in allowed}
    if api == "chat" and out.get("stream"):
        # usage arrives in the last chunk only when asked for; the ledger needs it
        opts = dict(out.get("stream_options") or {}) if isinstance(out.get("stream_options"), Mapping) else {}
        opts["include_usage"] = True
        out["stream_options"] = opts
    return out


def native_view(provider_name: str, api: str, profile_name: str | None = None) -> Response:
    st = state()
    with st.admission():  # counted toward LLM_PROXY_MAX_STREAMS_PER_WORKER from here
        s = st.settings
        provider = s.providers[provider_name]
        profile = s.profiles[profile_name] if profile_name else None
        identity, claims = identify(s, alt_header=True, loader=st.hooks.identity_loader)
        require_profile(s, profile)
        g.llm_proxy_rate_headers, quota_spent = st.limits.hit_rate(identity) if st.limits else ({}, None)
        body = _check_body(api, read_json(provider.max_body_bytes or s.max_body_bytes), provider, s)
        check_native(api, body, attachment_policy(provider, profile))
        if profile is not None:
            check_profile_claim(s, claims, profile.name)
            apply_to_native(profile, api, body)
        model = body["model"]
        if not provider.allows(model):
            raise ModelNotAllowed(f"model {model!r} is not allowed on '{provider_name}'")
        check_model_claim(s, claims, model)
        before_upstream(st, body, identity)
        st.check_allowance(identity, quota_spent)
        stream = bool(body.get("stream"))
        prompt = body.get("messages") or body.get("input") or ""
        info = RequestInfo(
            g.llm_proxy_request_id,
            identity,
            provider_name,
            model,
            g.llm_proxy_started,
            endpoint=f"native:{api}",
            input_chars=len(_json.dumps(prompt)),
        )
        ex = Exchange(info)
    st.attach(ex, lambda: _json.dumps_str(prompt))  # open from here (no yield since the admission ended)
    g.llm_proxy_exchange = ex
    return accounted(ex, _call, st, ex, provider, api, body, stream)


def _call(st: ProxyState, ex: Exchange, provider: ProviderConfig, api: str, body: dict[str, Any], stream: bool) -> Response:
    return native_answer(st, ex, provider, api, body, stream, lambda turn: _live(st, ex, provider, api, body, stream, turn))


def _live(
    st: ProxyState, ex: Exchange, provider: ProviderConfig, api: str, body: dict[str, Any], stream: bool, turn: Turn | None
) -> Response:
    s = st.settings
    adapter = APIS[api][0]
    resp = open_upstream(
        st, ex, provider, adapter, _json.dumps(body), accept="text/event-stream" if stream else "application/json"
    )  # an error: accounted() records it
    translator = adapter.translator()
    ex.call.translator = translator
    if not stream:
        ex.call.resp = resp
        return _whole(ex, resp, api, translator, turn)
    upstream = UpstreamBody(resp, s.keepalive, raw=True)
    ex.call.resp = upstream
    content_type = resp.headers.get("content-type", "text/event-stream")
    source = turn.tee(ex, upstream, translator, raw=True, feed=translator.feed, content_type=content_type) if turn else upstream
    return stream_response(ex, passthrough(ex, source, api, translator), content_type)


def _whole(ex: Exchange, resp: Any, api: str, translator: Translator, turn: Turn | None = None) -> Response:
    """Non-streaming: the upstream's JSON, unchanged; its usage goes to the ledger."""
    raw = whole_body(resp)
    ex.call.resp = None
    content_type = resp.headers.get("content-type", "application/json")
    try:
        obj = _json.loads(raw)
        usage = obj.get("usage") or {}
        translator.read_usage(usage)
        translator.usage.reported = bool(usage)
        if api == "chat":
            translator.finish_reason = ((obj.get("choices") or [{}])[0] or {}).get("finish_reason")
        else:
            translator.finish_reason = obj.get("stop_reason") or obj.get("status")
    except MALFORMED:
        log.warning("request %s: the upstream's JSON answer had no readable usage", ex.request.request_id)
        if turn is not None:
            turn.failed(UpstreamError("the upstream's JSON answer could not be read"))
    translator.done = True
    ex.call.complete = True
    if turn is not None:
        turn.complete_whole(raw, translator, content_type)
    ex.finalize()
    return Response(raw, status=resp.status_code, content_type=content_type)
