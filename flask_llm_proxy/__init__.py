"""flask-llm-proxy: stream Anthropic and OpenAI models to browser apps from a Flask backend,
keeping API keys on the server."""

from __future__ import annotations

from .accounting.exchange import UsageRecord
from .errors import ConfigError, ProxyError
from .extension import LLMProxy
from .signals import upstream_retry, usage_recorded
from .state import ProxyState

__version__ = "0.2.0"

__all__ = [
    "ConfigError",
    "LLMProxy",
    "ProxyError",
    "ProxyState",
    "UsageRecord",
    "__version__",
    "upstream_retry",
    "usage_recorded",
]
