"""One module per upstream API; :func:`adapter_for` picks the one a request needs."""

from __future__ import annotations

from ..config import ProviderConfig
from ..contract.request import ChatRequest
from .anthropic import AnthropicAdapter
from .base import Adapter, ToolCall, Translator, Usage
from .openai import ChatCompletionsAdapter
from .responses import ResponsesAdapter

_ANTHROPIC = AnthropicAdapter()
_CHAT = ChatCompletionsAdapter()
_RESPONSES = ResponsesAdapter()


def adapter_for(provider: ProviderConfig, req: ChatRequest) -> Adapter:
    if provider.type == "anthropic":
        return _ANTHROPIC
    if req.responses_body is not None:
        return _RESPONSES
    return _CHAT


__all__ = ["Adapter", "ToolCall", "Translator", "Usage", "adapter_for"]
