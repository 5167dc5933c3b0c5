"""flask-llm-proxy: stream Anthropic and OpenAI models to browser apps from a Flask backend,
keeping API keys on the server."""
from __future__ import annotations

from .errors import ConfigError, ProxyError
from .exchange import UsageRecord
from .extension import LLMProxy, ProxyState
from .signals import upstream_retry, usage_recorded

__version__ = "0.1.0"

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
