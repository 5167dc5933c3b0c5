"""Every ``LLM_PROXY_*`` setting in one place: its default, its check, and its parsed form.

``init_app`` calls :func:`load_settings` once; a wrong value raises :class:`ConfigError` naming
the key there, never at the first request. Views read the frozen :class:`Settings`, so no
per-request work re-parses configuration.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import ConfigError

log = logging.getLogger("flask_llm_proxy")

PROVIDER_TYPES = ("anthropic", "openai", "mock")
OFFICIAL_BASE_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
ENV_BASE_URL = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
ENV_API_KEY = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
RESERVED_NAMES = {"health", "models", "metrics", "static", "client.js"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RATE_RE = re.compile(
    r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*$", re.IGNORECASE
)

#: key -> default. The README's configuration table is written from this dict.
DEFAULTS: dict[str, Any] = {
    "LLM_PROXY_PROVIDERS": {},
    "LLM_PROXY_URL_PREFIX": "/api",
    "LLM_PROXY_MAX_BODY_BYTES": 8 * 1024 * 1024,
    "LLM_PROXY_MAX_MESSAGES": 500,
    "LLM_PROXY_DEFAULT_MAX_TOKENS": 1024,
    "LLM_PROXY_MAX_TOKENS": None,
    "LLM_PROXY_MAX_RETRIES": 2,
    "LLM_PROXY_RETRY_BACKOFF": 1.0,
    "LLM_PROXY_RETRY_AFTER_MAX": 20.0,
    "LLM_PROXY_CONNECT_TIMEOUT": 10.0,
    "LLM_PROXY_READ_TIMEOUT": 60.0,
    "LLM_PROXY_KEEPALIVE": 15.0,
    "LLM_PROXY_POOL_MAXSIZE": 10000,
    "LLM_PROXY_REQUIRE_AUTH": True,
    "LLM_PROXY_PUBLIC_HEALTH": False,
    "LLM_PROXY_MODELS_CLAIM": "llm_models",
    "LLM_PROXY_TRUSTED_PROXIES": 0,
    "LLM_PROXY_RATE_LIMIT": "60/minute",
    "LLM_PROXY_TOKEN_QUOTA": None,
    "LLM_PROXY_FAIL_OPEN": False,
    "LLM_PROXY_CORS_ORIGINS": [],
    "LLM_PROXY_CORS_CREDENTIALS": False,
    "LLM_PROXY_CORS_MAX_AGE": 600,
    "LLM_PROXY_PRICING": {},
    "LLM_PROXY_USAGE_STORE": None,
    "LLM_PROXY_BUDGETS": {},
    "LLM_PROXY_METRICS": False,
    "LLM_PROXY_METRICS_ALLOW": [],
    "LLM_PROXY_LOG_CONTENT": False,
}


@dataclass(frozen=True)
class ProviderConfig:
    """One entry of ``LLM_PROXY_PROVIDERS``: where to send, with which key, which models."""

    name: str
    type: str
    base_url: str
    api_key: str = field(repr=False)
    models: tuple[str, ...]
    max_tokens: int | None = None
    max_messages: int | None = None
    max_body_bytes: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    anthropic_version: str = "2023-06-01"
    max_tokens_field: str = "max_tokens"
    mock_tokens: int = 20
    mock_pace_ms: float = 20.0
    mock_text: str = ""
    _exact: frozenset[str] = field(default=frozenset(), repr=False)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def label_for(self, model: str) -> str:
        """A bounded metrics label: the model when listed by name, else the pattern it matched."""
        if model in self._exact:
            return model
        return next((m for m in self.models if fnmatch.fnmatchcase(model, m)), "other")

    def allows(self, model: str) -> bool:
        """Exact names are a set lookup; all patterns are one precompiled regex."""
        if model in self._exact:
            return True
        return self._pattern is not None and self._pattern.fullmatch(model) is not None


@dataclass(frozen=True)
class Settings:
    providers: Mapping[str, ProviderConfig]
    url_prefix: str
    max_body_bytes: int
    max_messages: int
    default_max_tokens: int
    max_tokens: int | None
    max_retries: int
    retry_backoff: float
    retry_after_max: float
    connect_timeout: float
    read_timeout: float
    keepalive: float | None
    pool_maxsize: int
    require_auth: bool
    public_health: bool
    models_claim: str | None
    trusted_proxies: int
    rate_limit: str | None
    token_quota: str | None
    fail_open: bool
    cors_origins: tuple[str, ...]
    cors_credentials: bool
    cors_max_age: int
    pricing: Mapping[str, Any]
    usage_store: str | None
    budgets: Mapping[str, Mapping[str, float]]
    metrics: bool
    metrics_allow: tuple[str, ...]
    log_content: bool


# --- small checkers: each raises ConfigError(key, what is wrong) ---------------------------


def _bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return v.strip().lower() in ("1", "true", "yes", "on")
    raise ConfigError(key, f"expected a boolean, got {v!r}")


def _int(key: str, v: Any, *, minimum: int = 0, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, f"expected an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {v}")
    return v


def _float(key: str, v: Any, *, minimum: float = 0.0, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(key, f"expected a number of seconds, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, f"expected a number, got {v!r}")
    if v < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {v}")
    return float(v)


def _rate(key: str, v: Any) -> str | None:
    if v in (None, "", False):
        return None
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a rate string like '60/minute' or None, got {v!r}")
    for part in re.split(r"[;,]", v):
        if not _RATE_RE.match(part):
            raise ConfigError(key, f"{part.strip()!r} is not a rate like '60/minute' or '200000 per day'")
    return v


def _str_list(key: str, v: Any) -> tuple[str, ...]:
    if v in (None, ""):
        return ()
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, (list, tuple, set)) or not all(isinstance(s, str) for s in v):
        raise ConfigError(key, f"expected a list of strings, got {v!r}")
    return tuple(v)


def compile_models(key: str, models: Any) -> tuple[frozenset[str], re.Pattern[str] | None]:
    if isinstance(models, str) or not isinstance(models, (list, tuple)) or not models:
        raise ConfigError(key, "must be a non-empty list of model names or fnmatch patterns")
    exact, patterns = set(), []
    for m in models:
        if not isinstance(m, str) or not m:
            raise ConfigError(key, f"model entries must be non-empty strings, got {m!r}")
        if any(c in m for c in "*?["):
            patterns.append(fnmatch.translate(m))
        else:
            exact.add(m)
    pattern = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    return frozenset(exact), pattern


_PROVIDER_KEYS = {
    "type", "base_url", "api_key", "models", "max_tokens", "max_messages", "max_body_bytes",
    "headers", "anthropic_version", "max_tokens_field", "tokens", "pace_ms", "text",
}
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


def _provider(name: str, entry: Any, environ: Mapping[str, str]) -> ProviderConfig:
    key = f"LLM_PROXY_PROVIDERS[{name!r}]"
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in RESERVED_NAMES:
        raise ConfigError(
            "LLM_PROXY_PROVIDERS",
            f"{name!r} is not a usable provider name (letters, digits, '_', '-', '.'; not one of "
            f"{sorted(RESERVED_NAMES)})",
        )
    if not isinstance(entry, Mapping):
        raise ConfigError(key, f"expected a dict, got {type(entry).__name__}")
    unknown = set(entry) - _PROVIDER_KEYS
    if unknown:
        raise ConfigError(key, f"unknown option(s) {sorted(unknown)}; known: {sorted(_PROVIDER_KEYS)}")
    ptype = entry.get("type", name)
    if ptype not in PROVIDER_TYPES:
        raise ConfigError(
            f"{key}.type",
            f"{ptype!r} is not a provider type; use one of {list(PROVIDER_TYPES)}"
            + ("" if "type" in entry else " (type defaults to the entry's name)"),
        )
    exact, pattern = compile_models(f"{key}.models", entry.get("models"))
    base_url = entry.get("base_url") or environ.get(ENV_BASE_URL.get(ptype, ""), "") or OFFICIAL_BASE_URLS.get(ptype, "")
    api_key = entry.get("api_key") or environ.get(ENV_API_KEY.get(ptype, ""), "")
    if ptype != "mock":
        if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url):
            raise ConfigError(f"{key}.base_url", "must be an http:// or https:// URL")
        if not api_key or not isinstance(api_key, str):
            raise ConfigError(
                f"{key}.api_key",
                f"no API key: set it here or in the environment variable {ENV_API_KEY[ptype]}",
            )
    headers = entry.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ConfigError(f"{key}.headers", "must be a dict of header name -> string value")
    bad = _FORBIDDEN_HEADERS & {k.lower() for k in headers}
    if bad:
        raise ConfigError(f"{key}.headers", f"may not set {sorted(bad)}")
    mtf = entry.get("max_tokens_field")
    if mtf is None:
        # OpenAI's own API rejects max_tokens for newer models; compatible servers know only max_tokens.
        mtf = "max_completion_tokens" if base_url.rstrip("/") == OFFICIAL_BASE_URLS["openai"] else "max_tokens"
    if mtf not in ("max_tokens", "max_completion_tokens"):
        raise ConfigError(f"{key}.max_tokens_field", "must be 'max_tokens' or 'max_completion_tokens'")
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=base_url.rstrip("/"),
        api_key=api_key or "",
        models=tuple(entry["models"]),
        max_tokens=_int(f"{key}.max_tokens", entry.get("max_tokens"), minimum=1, optional=True),
        max_messages=_int(f"{key}.max_messages", entry.get("max_messages"), minimum=1, optional=True),
        max_body_bytes=_int(f"{key}.max_body_bytes", entry.get("max_body_bytes"), minimum=1, optional=True),
        headers=dict(headers),
        anthropic_version=str(entry.get("anthropic_version", "2023-06-01")),
        max_tokens_field=mtf,
        mock_tokens=_int(f"{key}.tokens", entry.get("tokens", 20), minimum=0),  # type: ignore[arg-type]
        mock_pace_ms=_float(f"{key}.pace_ms", entry.get("pace_ms", 20.0)),  # type: ignore[arg-type]
        mock_text=str(entry.get("text", "")),
        _exact=exact,
        _pattern=pattern,
    )


def _providers(v: Any, environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    if not isinstance(v, Mapping):
        raise ConfigError("LLM_PROXY_PROVIDERS", f"expected a dict of name -> options, got {type(v).__name__}")
    return {name: _provider(name, entry, environ) for name, entry in v.items()}


def _prefix(key: str, v: Any) -> str:
    if not isinstance(v, str) or (v and not v.startswith("/")) or v.endswith("/") and v != "/":
        raise ConfigError(key, f"must start with '/' and not end with '/', got {v!r}")
    return "" if v == "/" else v


_BUDGET_KEYS = {"daily_usd", "monthly_usd", "daily_tokens", "monthly_tokens"}


def _budgets(key: str, v: Any) -> dict[str, dict[str, float]]:
    if not v:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(key, "expected a dict of identity (or 'default') -> limits")
    out: dict[str, dict[str, float]] = {}
    for ident, limits in v.items():
        if not isinstance(limits, Mapping):
            raise ConfigError(f"{key}[{ident!r}]", "expected a dict like {'daily_usd': 5.0}")
        bad = set(limits) - _BUDGET_KEYS
        if bad:
            raise ConfigError(f"{key}[{ident!r}]", f"unknown limit(s) {sorted(bad)}; known: {sorted(_BUDGET_KEYS)}")
        out[str(ident)] = {
            k: _float(f"{key}[{ident!r}].{k}", lim) for k, lim in limits.items()  # type: ignore[misc]
        }
    return out


def _pricing(key: str, v: Any) -> dict[str, Any]:
    if not v:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(key, "expected a dict of model (or pattern) -> {'input': ..., 'output': ...}")
    for model, price in v.items():
        if price is None:
            continue
        if not isinstance(price, Mapping) or not {"input", "output"} <= set(price):
            raise ConfigError(f"{key}[{model!r}]", "needs at least 'input' and 'output' in USD per million tokens")
        for k, p in price.items():
            if k not in ("input", "output", "cache_read", "cache_write"):
                raise ConfigError(f"{key}[{model!r}]", f"unknown price {k!r}")
            _float(f"{key}[{model!r}].{k}", p)
    return dict(v)


def _cors_origins(key: str, v: Any) -> tuple[str, ...]:
    origins = _str_list(key, v)
    for o in origins:
        if o != "*" and not o.startswith(("http://", "https://")):
            try:
                re.compile(o)
            except re.error as exc:
                raise ConfigError(key, f"{o!r} is neither an origin nor a valid regular expression: {exc}") from None
    return origins


def warn_unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """A typo in a key must not pass silently; it is a warning, not an error."""
    unknown = sorted(k for k in config if k.startswith("LLM_PROXY_") and k not in DEFAULTS)
    for k in unknown:
        close = difflib.get_close_matches(k, DEFAULTS.keys(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        msg = f"unknown setting {k}{hint}"
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)
    return unknown


def load_settings(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    warn_unknown_keys(config)
    c: Callable[[str], Any] = lambda k: config.get(k, DEFAULTS[k])  # noqa: E731
    cors_origins = _cors_origins("LLM_PROXY_CORS_ORIGINS", c("LLM_PROXY_CORS_ORIGINS"))
    cors_credentials = _bool("LLM_PROXY_CORS_CREDENTIALS", c("LLM_PROXY_CORS_CREDENTIALS"))
    if cors_credentials and any(o in ("*", ".*") for o in cors_origins):
        raise ConfigError(
            "LLM_PROXY_CORS_ORIGINS",
            "'*' together with LLM_PROXY_CORS_CREDENTIALS lets any site act as the user; list the origins",
        )
    claim = c("LLM_PROXY_MODELS_CLAIM")
    if claim is not None and not isinstance(claim, str):
        raise ConfigError("LLM_PROXY_MODELS_CLAIM", "expected a claim name or None")
    store = c("LLM_PROXY_USAGE_STORE")
    if store is not None and (not isinstance(store, str) or not store.startswith(("sqlite:///", "redis://", "rediss://", "unix://", "memory://", "none"))):
        raise ConfigError("LLM_PROXY_USAGE_STORE", f"expected 'sqlite:///path', 'redis://...' or 'none', got {store!r}")
    keepalive = _float("LLM_PROXY_KEEPALIVE", c("LLM_PROXY_KEEPALIVE"), optional=True)
    return Settings(
        providers=_providers(c("LLM_PROXY_PROVIDERS"), environ),
        url_prefix=_prefix("LLM_PROXY_URL_PREFIX", c("LLM_PROXY_URL_PREFIX")),
        max_body_bytes=_int("LLM_PROXY_MAX_BODY_BYTES", c("LLM_PROXY_MAX_BODY_BYTES"), minimum=1),  # type: ignore[arg-type]
        max_messages=_int("LLM_PROXY_MAX_MESSAGES", c("LLM_PROXY_MAX_MESSAGES"), minimum=1),  # type: ignore[arg-type]
        default_max_tokens=_int("LLM_PROXY_DEFAULT_MAX_TOKENS", c("LLM_PROXY_DEFAULT_MAX_TOKENS"), minimum=1),  # type: ignore[arg-type]
        max_tokens=_int("LLM_PROXY_MAX_TOKENS", c("LLM_PROXY_MAX_TOKENS"), minimum=1, optional=True),
        max_retries=_int("LLM_PROXY_MAX_RETRIES", c("LLM_PROXY_MAX_RETRIES")),  # type: ignore[arg-type]
        retry_backoff=_float("LLM_PROXY_RETRY_BACKOFF", c("LLM_PROXY_RETRY_BACKOFF")),  # type: ignore[arg-type]
        retry_after_max=_float("LLM_PROXY_RETRY_AFTER_MAX", c("LLM_PROXY_RETRY_AFTER_MAX")),  # type: ignore[arg-type]
        connect_timeout=_float("LLM_PROXY_CONNECT_TIMEOUT", c("LLM_PROXY_CONNECT_TIMEOUT"), minimum=0.001),  # type: ignore[arg-type]
        read_timeout=_float("LLM_PROXY_READ_TIMEOUT", c("LLM_PROXY_READ_TIMEOUT"), minimum=0.001),  # type: ignore[arg-type]
        keepalive=keepalive or None,
        pool_maxsize=_int("LLM_PROXY_POOL_MAXSIZE", c("LLM_PROXY_POOL_MAXSIZE"), minimum=1),  # type: ignore[arg-type]
        require_auth=_bool("LLM_PROXY_REQUIRE_AUTH", c("LLM_PROXY_REQUIRE_AUTH")),
        public_health=_bool("LLM_PROXY_PUBLIC_HEALTH", c("LLM_PROXY_PUBLIC_HEALTH")),
        models_claim=claim or None,
        trusted_proxies=_int("LLM_PROXY_TRUSTED_PROXIES", c("LLM_PROXY_TRUSTED_PROXIES")),  # type: ignore[arg-type]
        rate_limit=_rate("LLM_PROXY_RATE_LIMIT", c("LLM_PROXY_RATE_LIMIT")),
        token_quota=_rate("LLM_PROXY_TOKEN_QUOTA", c("LLM_PROXY_TOKEN_QUOTA")),
        fail_open=_bool("LLM_PROXY_FAIL_OPEN", c("LLM_PROXY_FAIL_OPEN")),
        cors_origins=cors_origins,
        cors_credentials=cors_credentials,
        cors_max_age=_int("LLM_PROXY_CORS_MAX_AGE", c("LLM_PROXY_CORS_MAX_AGE")),  # type: ignore[arg-type]
        pricing=_pricing("LLM_PROXY_PRICING", c("LLM_PROXY_PRICING")),
        usage_store=store,
        budgets=_budgets("LLM_PROXY_BUDGETS", c("LLM_PROXY_BUDGETS")),
        metrics=_bool("LLM_PROXY_METRICS", c("LLM_PROXY_METRICS")),
        metrics_allow=_str_list("LLM_PROXY_METRICS_ALLOW", c("LLM_PROXY_METRICS_ALLOW")),
        log_content=_bool("LLM_PROXY_LOG_CONTENT", c("LLM_PROXY_LOG_CONTENT")),
    )
