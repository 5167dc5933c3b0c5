"""Every ``LLM_PROXY_*`` setting in one place: its default, its check, and its parsed form.

``init_app`` calls :func:`load_settings` once; a wrong value raises :class:`ConfigError` naming
the key there, never at the first request. Views read the frozen :class:`Settings`, so no
per-request work re-parses configuration.
"""
from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import json
import logging
import math
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from .errors import ConfigError

log = logging.getLogger("flask_llm_proxy")

PROVIDER_TYPES = ("anthropic", "openai", "mock")
OFFICIAL_BASE_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
ENV_BASE_URL = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
ENV_API_KEY = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header when a provider sets none
RESERVED_NAMES = {"health", "models", "metrics", "static", "client.js"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RATE_RE = re.compile(
    r"^\s*(\d+)\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*$", re.IGNORECASE
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
    "LLM_PROXY_USAGE_STREAM_MAXLEN": 1_000_000,
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
    anthropic_version: str = ANTHROPIC_VERSION
    max_tokens_field: str = "max_tokens"
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    mock_tokens: int = 20
    mock_pace_ms: float = 20.0
    mock_text: str = ""
    _exact: frozenset[str] = field(default=frozenset(), repr=False)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # provider_secrets: scrubbed from every error

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
    pricing: Mapping[str, Mapping[str, float] | None]
    usage_store: str | None
    usage_stream_maxlen: int | None
    budgets: Mapping[str, Mapping[str, float]]
    metrics: bool
    metrics_allow: tuple[str, ...]
    log_content: bool


# --- small checkers: each raises ConfigError(key, what is wrong) ---------------------------


_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def _bool(key: str, v: Any) -> bool:
    """Explicit words only: an empty ``LLM_PROXY_REQUIRE_AUTH=`` must not switch auth off."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):  # JSON from the environment: LLM_PROXY_METRICS=1
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return v.strip().lower() in _TRUE_WORDS
    raise ConfigError(key, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {v!r}")


def _int(key: str, v: Any, *, minimum: int = 0, maximum: int | None = None, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, f"expected an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ConfigError(key, f"must be <= {maximum}, got {v}")
    return v


def _float(key: str, v: Any, *, minimum: float = 0.0, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(key, f"expected a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, f"expected a number, got {v!r}")
    if not math.isfinite(v):
        # nan compares False with everything, so it would pass every check below and then
        # break each request (a timeout) or never trigger (a budget); no setting means inf.
        raise ConfigError(key, f"must be a finite number, got {v}")
    if v < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {v}")
    return float(v)


def _rate(key: str, v: Any) -> str | None:
    if v in (None, "", False):
        return None
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a rate string like '60/minute' or None, got {v!r}")
    for part in re.split(r"[;,]", v):
        m = _RATE_RE.match(part)
        if not m:
            raise ConfigError(key, f"{part.strip()!r} is not a rate like '60/minute' or '200000 per day'")
        if int(m.group(1)) == 0 or (m.group(3) and int(m.group(3)) == 0):  # 0/minute blocks all; 10/0 minute none
            raise ConfigError(key, f"{part.strip()!r}: the amount and the period must be at least 1 (None turns it off)")
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
    "headers", "anthropic_version", "max_tokens_field", "verify", "cert", "tokens", "pace_ms", "text",
}
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
# what the proxy sends itself: a configured one would go out next to it (names differ in case)
_PROXY_HEADERS = {"content-type", "accept", "accept-encoding", "x-request-id"}
_AUTH_HEADERS = {"anthropic": {"x-api-key": "api_key", "anthropic-version": "anthropic_version"}, "openai": {"authorization": "api_key"}}
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token


def _header_value_problem(v: str) -> str | None:
    """Why ``v`` cannot be sent as a header value, worded without quoting ``v`` (it may be a secret).

    Headers are written to the socket as latin-1: a CR/LF would split the request and any other
    character fails every request with a 500, so both are refused here instead.
    """
    if any(unicodedata.category(c) == "Cc" and c != "\t" for c in v):  # a tab is legal in a field value
        return "contains a control character (a line break or tab, e.g. from a file or a copy-paste)"
    try:
        v.encode("latin-1")
    except UnicodeEncodeError:
        return "contains a character that cannot be sent in an HTTP header (e.g. a typographic quote or dash)"
    return None


def _base_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be the upstream's base URL; checked once here, not on every request."""
    if not isinstance(url, str):
        return "must be an http:// or https:// URL"
    if not url.isascii() or any(c.isspace() or unicodedata.category(c) == "Cc" for c in url):
        return "must be an http:// or https:// URL without whitespace or non-ASCII characters (use the punycode host)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of 0-65535 or not a number, a broken [IPv6] literal
        return "must be an http:// or https:// URL with a valid host and a port from 1 to 65535"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, like https://api.example.com/v1"
    if port == 0:
        return "must be an http:// or https:// URL with a port from 1 to 65535"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must be an http:// or https:// URL without '?query' or '#fragment' (API paths are appended to it)"
    return None


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
    env_url = "" if entry.get("base_url") else environ.get(ENV_BASE_URL.get(ptype, ""), "")
    base_url = entry.get("base_url") or env_url or OFFICIAL_BASE_URLS.get(ptype, "")
    env_key = "" if entry.get("api_key") else environ.get(ENV_API_KEY.get(ptype, ""), "")
    api_key = entry.get("api_key") or env_key
    if ptype != "mock":
        problem = _base_url_problem(base_url)
        if problem:
            where = f" (read from the environment variable {ENV_BASE_URL[ptype]})" if env_url else ""
            raise ConfigError(f"{key}.base_url", problem + where)
        if not api_key:
            raise ConfigError(
                f"{key}.api_key",
                f"no API key: set it here or in the environment variable {ENV_API_KEY[ptype]}",
            )
        if not isinstance(api_key, str):
            raise ConfigError(f"{key}.api_key", f"must be a string, got {type(api_key).__name__}")
        # Never quote the key: this message ends up in logs and tracebacks.
        problem = _header_value_problem(api_key)
        if problem is None and api_key != api_key.strip():
            problem = "starts or ends with whitespace"
        if problem:
            where = f" (read from the environment variable {ENV_API_KEY[ptype]})" if env_key else ""
            raise ConfigError(f"{key}.api_key", f"{problem}{where}; the key itself is not shown")
    headers = entry.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ConfigError(f"{key}.headers", "must be a dict of header name -> string value")
    bad = _FORBIDDEN_HEADERS & {k.lower() for k in headers}
    if bad:
        raise ConfigError(f"{key}.headers", f"may not set {sorted(bad)}")
    own = _AUTH_HEADERS.get(ptype, {})
    for hname in headers:
        if hname.lower() in _PROXY_HEADERS:
            raise ConfigError(f"{key}.headers", f"{hname!r} is set by the proxy on every upstream request")
        if hname.lower() in own:
            raise ConfigError(f"{key}.headers", f"{hname!r} is sent from the provider's {own[hname.lower()]!r}: set that instead")
    for hname, hvalue in headers.items():
        if not _HEADER_NAME_RE.match(hname):
            raise ConfigError(f"{key}.headers", f"{hname!r} is not a valid header name")
        problem = _header_value_problem(hvalue)
        if problem:  # the value may be a token: name the header only
            raise ConfigError(f"{key}.headers", f"the value of {hname!r} {problem}; the value itself is not shown")
    version = entry.get("anthropic_version")
    if version is None:  # like every optional provider setting: None means the default
        version = ANTHROPIC_VERSION
    elif not isinstance(version, str) or not version or _header_value_problem(version):
        raise ConfigError(f"{key}.anthropic_version", f"expected a version string like '2023-06-01' or None, got {version!r}")
    mtf = entry.get("max_tokens_field")
    if mtf is None:
        # OpenAI's own API rejects max_tokens for newer models; compatible servers know only max_tokens.
        mtf = "max_completion_tokens" if base_url.rstrip("/") == OFFICIAL_BASE_URLS["openai"] else "max_tokens"
    if mtf not in ("max_tokens", "max_completion_tokens"):
        raise ConfigError(f"{key}.max_tokens_field", "must be 'max_tokens' or 'max_completion_tokens'")
    verify, cert = _tls_options(key, entry, base_url)
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
        anthropic_version=version,
        max_tokens_field=mtf,
        verify=verify,
        cert=cert,
        mock_tokens=_int(f"{key}.tokens", entry.get("tokens", 20), minimum=0),  # type: ignore[arg-type]
        mock_pace_ms=_float(f"{key}.pace_ms", entry.get("pace_ms", 20.0)),  # type: ignore[arg-type]
        mock_text=str(entry.get("text", "")),
        _exact=exact,
        _pattern=pattern,
        secrets=provider_secrets(api_key or "", headers),
    )


def _tls_options(key: str, entry: Mapping[str, Any], base_url: str) -> tuple[bool | str, str | tuple[str, str] | None]:
    """``verify``: True (the system's CAs, or REQUESTS_CA_BUNDLE), a CA bundle file or directory, or
    False (no verification: a local server with a self-signed certificate, never the internet);
    ``cert``: a client certificate for mutual TLS, one PEM file or a [certificate, key] pair."""
    verify = entry.get("verify", True)
    if verify is None:
        verify = True
    if isinstance(verify, str):
        if not os.path.exists(verify):
            raise ConfigError(f"{key}.verify", f"no CA bundle at {verify!r} (a file or directory of PEM certificates)")
    elif not isinstance(verify, bool):
        raise ConfigError(f"{key}.verify", f"expected True, False or the path of a CA bundle, got {verify!r}")
    elif verify is False and base_url.startswith("https://"):
        msg = (f"{key}.verify is False: TLS certificates of {base_url} are NOT checked, so anyone on the network "
               "path can read the API key and the conversations. Use it only for a local server with a self-signed "
               "certificate; give its CA bundle's path instead where you can.")
        warnings.warn(msg, stacklevel=4)
        log.warning(msg)
    cert = entry.get("cert")
    if cert is None:
        return verify, None
    files = [cert] if isinstance(cert, str) else list(cert) if isinstance(cert, (list, tuple)) else None
    if not files or len(files) > 2 or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(f"{key}.cert", "expected the path of a PEM file with certificate and key, or [certificate path, key path]")
    for f in files:
        if not os.path.isfile(f):
            raise ConfigError(f"{key}.cert", f"no such file: {f!r}")
    return verify, (files[0] if len(files) == 1 else (files[0], files[1]))


_SECRET_HEADER = re.compile(r"key|auth|token|secret|signature|password|credential|cookie|session", re.IGNORECASE)
_SCHEME = re.compile(r"^(?:Bearer|Basic|Token|Key)\s+", re.IGNORECASE)


def provider_secrets(api_key: str, headers: Mapping[str, str]) -> tuple[str, ...]:
    """What never leaves the proxy in an error or a log line, longest first (so that a value that
    contains another is replaced whole): the API key, and the values of configured headers named
    like credentials (``api-key``, ``Helicone-Auth``, ``x-goog-api-key``...), with and without a
    ``Bearer``/``Basic`` prefix. Other headers (``anthropic-beta``, ``OpenAI-Organization``) stay
    readable in the upstream's messages. Each also as a JSON string may write it (``"`` and ``\\``
    escaped, ``/`` as ``\\/``): the native endpoints relay an upstream's JSON as it came. Computed once
    per provider, here."""
    found = {api_key}
    for name, value in headers.items():
        if _SECRET_HEADER.search(name) and value:
            found.add(value)
            found.add(_SCHEME.sub("", value))
    for value in list(found):
        escaped = json.dumps(value)[1:-1]
        found.update((escaped, escaped.replace("/", "\\/")))
    return tuple(sorted((v for v in found if v), key=len, reverse=True))


def _providers(v: Any, environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    if not isinstance(v, Mapping):
        raise ConfigError("LLM_PROXY_PROVIDERS", f"expected a dict of name -> options, got {type(v).__name__}")
    return {name: _provider(name, entry, environ) for name, entry in v.items()}


def _prefix(key: str, v: Any) -> str:
    if not isinstance(v, str) or (v and not v.startswith("/")) or v.endswith("/") and v != "/":
        raise ConfigError(key, f"must start with '/' and not end with '/', got {v!r}")
    return "" if v == "/" else v


_BUDGET_KEYS = {"daily_usd", "monthly_usd", "daily_tokens", "monthly_tokens"}


def _budgets(key: str, v: Any) -> dict[str, dict[str, float | None]]:
    if not v:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(key, "expected a dict of identity (or 'default') -> limits")
    out: dict[str, dict[str, float | None]] = {}
    for ident, limits in v.items():
        if not isinstance(limits, Mapping):
            raise ConfigError(f"{key}[{ident!r}]", "expected a dict like {'daily_usd': 5.0}")
        bad = set(limits) - _BUDGET_KEYS
        if bad:
            raise ConfigError(f"{key}[{ident!r}]", f"unknown limit(s) {sorted(bad)}; known: {sorted(_BUDGET_KEYS)}")
        out[str(ident)] = {  # None: no limit of that kind (an override of the default's)
            k: _float(f"{key}[{ident!r}].{k}", lim, optional=True) for k, lim in limits.items()  # type: ignore[misc]
        }
    return out


def _pricing(key: str, v: Any) -> dict[str, dict[str, float] | None]:
    """The parsed floats are kept, not the given values: pricing.py multiplies them, and a
    price read from JSON in the environment may well be the string "2.5"."""
    if not v:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(key, "expected a dict of model (or pattern) -> {'input': ..., 'output': ...}")
    out: dict[str, dict[str, float] | None] = {}
    for model, price in v.items():
        if price is None:
            out[model] = None
            continue
        if not isinstance(price, Mapping) or not {"input", "output"} <= set(price):
            raise ConfigError(f"{key}[{model!r}]", "needs at least 'input' and 'output' in USD per million tokens")
        for k in price:
            if k not in ("input", "output", "cache_read", "cache_write"):
                raise ConfigError(f"{key}[{model!r}]", f"unknown price {k!r}")
        out[model] = {k: _float(f"{key}[{model!r}].{k}", p) for k, p in price.items()}  # type: ignore[misc]
    return out


_REGEX_CHARS = set("\\^$*+{}[]|()")  # '.' and '?' occur in plain URLs too
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _cors_origins(key: str, v: Any) -> tuple[str, ...]:
    """Exact origins and regular expressions; an origin is ``scheme://host[:port]`` and nothing more.

    A browser's ``Origin`` never has a path, a trailing '/' or a default port: an entry like
    "https://app.example.com/" would match no request (extension.cors_origin_matchers makes it a
    pattern), and CORS would silently be off. Entries with regex syntax stay patterns.
    """
    origins = _str_list(key, v)
    for o in origins:
        if o == "*":
            continue
        if is_ipv6_origin(o):
            continue  # an exact origin with an IPv6 address (extension.cors_origin_matchers escapes it)
        if _ipv6_host(o):  # an IPv6 URL with a path, a trailing '/' or a bad port: no origin
            raise ConfigError(key, f"{o!r} is not an origin: use scheme://[address][:port], e.g. 'http://[::1]:3000'")
        if o.lower().startswith(("http://", "https://")) and not _REGEX_CHARS & set(o):
            try:
                parts = urlsplit(o)
                port = parts.port
            except ValueError:
                parts, port = None, None
            if parts is None or not parts.hostname or port == 0:
                raise ConfigError(key, f"{o!r} is not an origin: use scheme://host[:port], e.g. 'https://app.example.com'")
            fixed = f"{parts.scheme}://{parts.hostname}" + ("" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}")
            if fixed.lower() != o.lower():  # case is left alone: a pattern matches ignoring case
                raise ConfigError(
                    key, f"{o!r} is not an origin (scheme://host[:port]; no path, trailing '/' or default port): use {fixed!r}"
                )
        try:
            re.compile(o)
        except re.error as exc:
            raise ConfigError(key, f"{o!r} is neither an origin nor a valid regular expression: {exc}") from None
    return origins


def _ipv6_host(o: str) -> bool:
    """An http(s) URL whose host is an IPv6 address (a pattern like ``https://[a-z]+\\.test`` is not)."""
    if not o.lower().startswith(("http://[", "https://[")):
        return False
    try:
        host = urlsplit(o).hostname
        return host is not None and ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def is_ipv6_origin(o: str) -> bool:
    """``http://[::1]:8080``: an exact origin, though its brackets look like a regex character class."""
    if not _ipv6_host(o):
        return False
    parts = urlsplit(o)
    try:
        port = parts.port
    except ValueError:  # no number, or out of range
        return False
    return port != 0 and not (parts.path or parts.query or parts.fragment or o.endswith(("?", "#")))


def _metrics_allow(key: str, v: Any) -> tuple[str, ...]:
    """Addresses or CIDR networks, checked now: metrics.address_allowed skips an entry it cannot
    parse, so a typo like "10.0.0.0/33" would otherwise lock everyone out without a word."""
    entries = _str_list(key, v)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            hint = " (host names are not resolved: use 127.0.0.1 and ::1)" if entry.strip().lower() == "localhost" else ""
            raise ConfigError(key, f"{entry!r} is not an IP address or CIDR network{hint}") from None
    return entries


def _usage_store(key: str, v: Any) -> str | None:
    """Exactly the URIs ledger.open_store understands, so a wrong one names the key at init."""
    if v in (None, ""):
        return None
    if isinstance(v, str):
        if v == "none" or v.startswith(("redis://", "rediss://", "unix://")):
            return v
        if v.startswith("sqlite:///"):
            if v == "sqlite:///":
                raise ConfigError(
                    key, "'sqlite:///' needs a file: 'sqlite:///usage.sqlite3' (in the instance folder) or an absolute path"
                )
            return v
    raise ConfigError(
        key, f"expected None, 'sqlite:///path', 'redis://...', 'rediss://...', 'unix://...' or 'none', got {v!r}"
    )


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
    store = _usage_store("LLM_PROXY_USAGE_STORE", c("LLM_PROXY_USAGE_STORE"))
    keepalive = _float("LLM_PROXY_KEEPALIVE", c("LLM_PROXY_KEEPALIVE"), optional=True)
    return Settings(
        providers=_providers(c("LLM_PROXY_PROVIDERS"), environ),
        url_prefix=_prefix("LLM_PROXY_URL_PREFIX", c("LLM_PROXY_URL_PREFIX")),
        max_body_bytes=_int("LLM_PROXY_MAX_BODY_BYTES", c("LLM_PROXY_MAX_BODY_BYTES"), minimum=1),  # type: ignore[arg-type]
        max_messages=_int("LLM_PROXY_MAX_MESSAGES", c("LLM_PROXY_MAX_MESSAGES"), minimum=1),  # type: ignore[arg-type]
        default_max_tokens=_int("LLM_PROXY_DEFAULT_MAX_TOKENS", c("LLM_PROXY_DEFAULT_MAX_TOKENS"), minimum=1),  # type: ignore[arg-type]
        max_tokens=_int("LLM_PROXY_MAX_TOKENS", c("LLM_PROXY_MAX_TOKENS"), minimum=1, optional=True),
        max_retries=_int("LLM_PROXY_MAX_RETRIES", c("LLM_PROXY_MAX_RETRIES"), maximum=10),  # type: ignore[arg-type]
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
        # the Redis store's stream llm_proxy:usage, trimmed with XADD MAXLEN ~ n; None: never trimmed
        usage_stream_maxlen=_int("LLM_PROXY_USAGE_STREAM_MAXLEN", c("LLM_PROXY_USAGE_STREAM_MAXLEN"), minimum=1, optional=True),
        budgets=_budgets("LLM_PROXY_BUDGETS", c("LLM_PROXY_BUDGETS")),
        metrics=_bool("LLM_PROXY_METRICS", c("LLM_PROXY_METRICS")),
        metrics_allow=_metrics_allow("LLM_PROXY_METRICS_ALLOW", c("LLM_PROXY_METRICS_ALLOW")),
        log_content=_bool("LLM_PROXY_LOG_CONTENT", c("LLM_PROXY_LOG_CONTENT")),
    )
