"""Configuration: every ``LLM_PROXY_*`` key (:mod:`.keys`), checked once at ``init_app`` into a
frozen :class:`Settings`, so no request re-parses it and a wrong value names its key at start-up.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .keys import BY_NAME, DEFAULTS, KEYS, PREFIX, Key
from .origins import is_ipv6_origin
from .profiles import ProfileConfig, parse_profiles
from .providers import ProviderConfig, parse_fallbacks, parse_providers, provider_secrets

log = logging.getLogger("flask_llm_proxy")


@dataclass(frozen=True)
class Settings:
    """The parsed value of every key; attribute ``x`` holds ``LLM_PROXY_X`` (see :mod:`.keys`)."""

    providers: Mapping[str, ProviderConfig]
    url_prefix: str
    max_body_bytes: int
    max_messages: int
    default_max_tokens: int
    max_tokens: int | None
    #: LLM_PROXY_MAX_TOKENS was set by the host, so it is also sent when a client asks for no
    #: limit; the default is only a limit on what clients ask (a model whose own maximum is lower
    #: would refuse a request that carried it)
    max_tokens_sent: bool
    max_stream_seconds: float | None
    max_streams_per_worker: int | None
    max_retries: int
    retry_backoff: float
    retry_after_max: float
    connect_timeout: float
    read_timeout: float
    keepalive: float | None
    cooldown: float
    fallbacks: Mapping[str, tuple[tuple[str, str], ...]]
    pool_maxsize: int
    require_auth: bool
    public_health: bool
    models_claim: str | None
    trusted_proxies: int
    rate_limit: str | None
    token_quota: str | None
    fail_open: bool
    profiles: Mapping[str, ProfileConfig]
    require_profile: bool
    profiles_claim: str | None
    cors_origins: tuple[str, ...]
    cors_credentials: bool
    cors_max_age: int
    pricing: Mapping[str, Mapping[str, float] | None]
    usage_store: str | None
    usage_stream_maxlen: int | None
    write_ahead: bool
    worker_lease: float
    host_name: str | None
    budgets: Mapping[str, Mapping[str, float]]
    metrics: bool
    metrics_allow: tuple[str, ...]
    log_content: bool
    cache_url: str | None
    cache_ttl: int
    cache_scope: str
    cache_max_bytes: int
    max_concurrent: Mapping[str, int]  #: provider -> cap (only the capped providers)
    max_concurrent_per_user: int | None
    queue_timeout: float
    queue_url: str | None
    queue_lease: float
    admin: bool
    admin_claim: str | None


def warn_unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """A typo in a key must not pass silently; it is a warning, not an error."""
    unknown = sorted(k for k in config if k.startswith(PREFIX) and k not in BY_NAME)
    for k in unknown:
        close = difflib.get_close_matches(k, DEFAULTS.keys(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        msg = f"unknown setting {k}{hint}"
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)
    return unknown


def load_settings(config: Mapping[str, Any], environ: Mapping[str, str] | None = None, given: Any = None) -> Settings:
    """Check every key of ``config`` (defaults for the missing ones) into :class:`Settings`.
    ``given``: the keys the host set itself (default: those in ``config``)."""
    environ = os.environ if environ is None else environ
    given = config if given is None else given
    warn_unknown_keys(config)
    values = {key.attr: key.check(key.name, config.get(key.name, key.default)) for key in KEYS}
    values["providers"] = parse_providers(values["providers"], environ)
    values["profiles"] = parse_profiles("LLM_PROXY_PROFILES", values["profiles"], values["providers"])
    values["max_concurrent"] = _caps(values["max_concurrent"], values["providers"])
    values["fallbacks"] = parse_fallbacks(values["fallbacks"], values["providers"])
    values["max_tokens_sent"] = "LLM_PROXY_MAX_TOKENS" in given and values["max_tokens"] is not None
    if values["cors_credentials"] and any(o in ("*", ".*") for o in values["cors_origins"]):
        raise ConfigError(
            "LLM_PROXY_CORS_ORIGINS",
            "'*' together with LLM_PROXY_CORS_CREDENTIALS lets any site act as the user; list the origins",
        )
    return Settings(**values)


def _caps(v: Any, providers: Mapping[str, ProviderConfig]) -> dict[str, int]:
    """``LLM_PROXY_MAX_CONCURRENT`` as ``{provider: cap}``: a number applies to every provider."""
    if v is None:
        return {}
    if isinstance(v, int):
        return {name: v for name in providers}
    unknown = sorted(set(v) - set(providers))
    if unknown:
        raise ConfigError("LLM_PROXY_MAX_CONCURRENT", f"no provider named {unknown}; configured: {sorted(providers)}")
    return dict(v)


__all__ = [
    "BY_NAME",
    "ConfigError",
    "DEFAULTS",
    "KEYS",
    "Key",
    "PREFIX",
    "ProfileConfig",
    "ProviderConfig",
    "Settings",
    "is_ipv6_origin",
    "load_settings",
    "provider_secrets",
    "warn_unknown_keys",
]
