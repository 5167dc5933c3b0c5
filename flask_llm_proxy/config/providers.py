"""``LLM_PROXY_PROVIDERS``: one :class:`ProviderConfig` per entry, checked once at ``init_app``."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from ..contract.blocks import ATTACHMENT_KINDS
from ..errors import ConfigError
from .checks import boolean, compile_models, integer, number

log = logging.getLogger("flask_llm_proxy")

PROVIDER_TYPES = ("anthropic", "openai", "mock")
OFFICIAL_BASE_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
ENV_BASE_URL = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
ENV_API_KEY = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header when a provider sets none
RESERVED_NAMES = {"health", "models", "metrics", "static", "client.js", "profiles", "admin"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    #: the attachment kinds (``image``, ``document``) the host allows on this provider
    attachments: frozenset[str] = ATTACHMENT_KINDS
    #: the largest attachment, in decoded bytes; None: the upstream API's own limits
    max_attachment_bytes: int | None = None
    cache: bool = True  #: answers of this provider may be served from the response cache
    _exact: frozenset[str] = field(default=frozenset(), repr=False)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # provider_secrets: scrubbed from every error
    label: str = ""  #: this deployment's label; "" for an entry without a ``deployments`` list
    #: with a ``deployments`` list: one full config each (the entry itself is the first one's)
    deployments: tuple[ProviderConfig, ...] = field(default=(), repr=False)

    def label_for(self, model: str) -> str:
        """A bounded metrics label: the model when listed by name, else the pattern it matched."""
        if model in self._exact:
            return model
        return next((m for m in self.models if fnmatch.fnmatchcase(model, m)), "other")

    @property
    def official(self) -> bool:
        """The provider's own API (not an OpenAI-compatible server): decides which of the fields
        only compatible servers take (``top_k``, ``repetition_penalty``) may be sent."""
        return self.base_url == OFFICIAL_BASE_URLS.get(self.type)

    def allows(self, model: str) -> bool:
        """Exact names are a set lookup; all patterns are one precompiled regex."""
        if model in self._exact:
            return True
        return self._pattern is not None and self._pattern.fullmatch(model) is not None


_PROVIDER_KEYS = {
    "type",
    "base_url",
    "api_key",
    "models",
    "max_tokens",
    "max_messages",
    "max_body_bytes",
    "headers",
    "anthropic_version",
    "max_tokens_field",
    "verify",
    "cert",
    "tokens",
    "pace_ms",
    "text",
    "attachments",
    "max_attachment_bytes",
    "cache",
}
_DEPLOYMENT_KEYS = {"label", "base_url", "api_key", "headers", "anthropic_version", "verify", "cert"}
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
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
    if isinstance(entry, Mapping) and "deployments" in entry:
        return _with_deployments(name, entry, environ, key)
    return _single(name, entry, environ, key)


def _with_deployments(name: str, entry: Mapping[str, Any], environ: Mapping[str, str], key: str) -> ProviderConfig:
    """``"deployments": [{"label": ..., "api_key": ..., "base_url": ...}, ...]``: each item is the
    entry with the item's options in place of the entry's (two accounts, a regional endpoint)."""
    items = entry["deployments"]
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{key}.deployments", "expected a non-empty list of dicts like {'label': 'primary', 'api_key': ...}")
    shared = {k: v for k, v in entry.items() if k != "deployments"}
    if shared.get("type", name) == "mock":
        raise ConfigError(f"{key}.deployments", "the mock provider has no deployments")
    deployments: list[ProviderConfig] = []
    for i, item in enumerate(items):
        where = f"{key}.deployments[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(where, f"expected a dict, got {type(item).__name__}")
        unknown = set(item) - _DEPLOYMENT_KEYS
        if unknown:
            raise ConfigError(
                where, f"unknown option(s) {sorted(unknown)}; a deployment sets {sorted(_DEPLOYMENT_KEYS)}, the rest is the entry's"
            )
        label = item.get("label", str(i))
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            raise ConfigError(f"{where}.label", "letters, digits, '_', '-', '.', ':' (it is sent in a response header)")
        if any(d.label == label for d in deployments):
            raise ConfigError(f"{where}.label", f"{label!r} names an earlier deployment too")
        merged = {**shared, **{k: v for k, v in item.items() if k != "label"}}
        deployments.append(replace(_single(name, merged, environ, where), label=label))
    if "max_tokens_field" not in shared and len({d.max_tokens_field for d in deployments}) > 1:
        raise ConfigError(
            f"{key}.max_tokens_field",
            "the deployments differ (OpenAI's own API and a compatible server): set it on the entry, one body is sent to every deployment",
        )
    # Every deployment's errors are scrubbed of every deployment's secrets.
    secrets = tuple(sorted({v for d in deployments for v in d.secrets}, key=len, reverse=True))
    deployments = [replace(d, secrets=secrets) for d in deployments]
    return replace(deployments[0], deployments=tuple(deployments))


def _single(name: str, entry: Any, environ: Mapping[str, str], key: str) -> ProviderConfig:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in RESERVED_NAMES:
        raise ConfigError(
            "LLM_PROXY_PROVIDERS",
            f"{name!r} is not a usable provider name (letters, digits, '_', '-', '.'; not one of {sorted(RESERVED_NAMES)})",
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
        max_tokens=integer(f"{key}.max_tokens", entry.get("max_tokens"), minimum=1, optional=True),
        max_messages=integer(f"{key}.max_messages", entry.get("max_messages"), minimum=1, optional=True),
        max_body_bytes=integer(f"{key}.max_body_bytes", entry.get("max_body_bytes"), minimum=1, optional=True),
        headers=dict(headers),
        anthropic_version=version,
        max_tokens_field=mtf,
        verify=verify,
        cert=cert,
        mock_tokens=integer(f"{key}.tokens", entry.get("tokens", 20), minimum=0),  # type: ignore[arg-type]
        mock_pace_ms=number(f"{key}.pace_ms", entry.get("pace_ms", 20.0)),  # type: ignore[arg-type]
        mock_text=str(entry.get("text", "")),
        attachments=parse_attachments(f"{key}.attachments", entry.get("attachments")),
        max_attachment_bytes=integer(f"{key}.max_attachment_bytes", entry.get("max_attachment_bytes"), minimum=1, optional=True),
        cache=boolean(f"{key}.cache", entry.get("cache", True)),
        _exact=exact,
        _pattern=pattern,
        secrets=provider_secrets(api_key or "", headers),
    )


def parse_attachments(key: str, v: Any) -> frozenset[str]:
    """``True`` or ``None``: every kind; ``False`` or ``[]``: none; or a list of kinds."""
    if v is None or v is True:
        return ATTACHMENT_KINDS
    if v is False:
        return frozenset()
    if not isinstance(v, (list, tuple)) or not all(isinstance(k, str) and k in ATTACHMENT_KINDS for k in v):
        raise ConfigError(key, f"expected True, False or a list of {sorted(ATTACHMENT_KINDS)}, got {v!r}")
    return frozenset(v)


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
        msg = (
            f"{key}.verify is False: TLS certificates of {base_url} are NOT checked, so anyone on the network "
            "path can read the API key and the conversations. Use it only for a local server with a self-signed "
            "certificate; give its CA bundle's path instead where you can."
        )
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


def parse_providers(v: Any, environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    if not isinstance(v, Mapping):
        raise ConfigError("LLM_PROXY_PROVIDERS", f"expected a dict of name -> options, got {type(v).__name__}")
    return {name: _provider(name, entry, environ) for name, entry in v.items()}


def parse_fallbacks(v: Any, providers: Mapping[str, ProviderConfig]) -> dict[str, tuple[tuple[str, str], ...]]:
    """``LLM_PROXY_FALLBACKS``: ``{"anthropic": ["openai:gpt-4o"]}`` -> ``{"anthropic": (("openai", "gpt-4o"),)}``."""
    key = "LLM_PROXY_FALLBACKS"
    if not v:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(key, 'expected a dict like {"anthropic": ["openai:gpt-4o"]}')
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for name, targets in v.items():
        if name not in providers:
            raise ConfigError(f"{key}[{name!r}]", f"no such provider; configured: {sorted(providers)}")
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)):
            raise ConfigError(f"{key}[{name!r}]", 'expected a list of "provider:model"')
        parsed = []
        for target in targets:
            other, sep, model = target.partition(":") if isinstance(target, str) else ("", "", "")
            if not sep or not model or other not in providers or other == name:
                raise ConfigError(f"{key}[{name!r}]", f'{target!r} is not "provider:model" of another configured provider')
            if not providers[other].allows(model):
                raise ConfigError(f"{key}[{name!r}]", f"{target!r}: '{other}' does not allow the model {model!r}")
            parsed.append((other, model))
        out[name] = tuple(parsed)
    return out
