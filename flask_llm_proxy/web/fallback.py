"""``LLM_PROXY_FALLBACKS``: where a request of the contract endpoint may go when its own provider
failed before the first byte (every deployment, every retry), e.g. ``{"anthropic":
["openai:gpt-4o"]}``. Off by default. The neutral request is translated for the other provider's
API; the ledger records ``fallback_from`` (the provider:model asked for) and the response names
the one that answered in ``X-LLM-Proxy-Fallback``. The native endpoints do not fall back: their
bodies are in one provider's own format.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..accounting.exchange import Exchange
from ..config import ProviderConfig
from ..contract.request import ChatRequest
from ..errors import ProxyError
from ..providers import adapter_for
from ..providers.base import Adapter
from ..state import ProxyState

log = logging.getLogger("flask_llm_proxy")

#: failures that say the provider is unavailable, not that the request is wrong
FALLBACK_TYPES = frozenset({"upstream_overloaded", "upstream_rate_limited", "upstream_error", "network_error", "timeout"})

Route = tuple[tuple[tuple[str, str], ...], ProviderConfig, ChatRequest, "Adapter | None", Any]


def fall_back(st: ProxyState, ex: Exchange, err: ProxyError, left: tuple[tuple[str, str], ...], req: ChatRequest) -> Route | None:
    """The next fallback that can take ``req`` after ``err``, as (the fallbacks left after it, its
    provider, the request for its model, its adapter, the upstream body); None: answer ``err``."""
    if err.type not in FALLBACK_TYPES:
        return None
    info = ex.request
    for n, (name, model) in enumerate(left):
        other = st.settings.providers[name]
        if req.responses_body is not None and other.type != "openai":
            continue  # a Responses-form body goes to OpenAI's Responses API only
        moved = replace(req, model=model)
        try:
            adapter = None if other.type == "mock" else adapter_for(other, moved)
            body = None if adapter is None else adapter.build(moved, other, st.settings)
        except ProxyError as why:
            log.info("request %s: fallback %s:%s cannot take this request (%s)", info.request_id, name, model, why.type)
            continue
        log.warning(
            "request %s: '%s' failed before the first byte (%s); falling back to %s:%s",
            info.request_id,
            info.provider,
            err.type,
            name,
            model,
        )
        if info.fallback_from is None:
            info.fallback_from = f"{info.provider}:{info.model}"
        info.provider, info.model = name, model
        return left[n + 1 :], other, moved, adapter, body
    return None
