"""``LLM_PROXY_PROFILES``: server-side presets that pin or bound what a browser may ask.

A profile names the provider and the models a request may use, the system prompt and whether the
client may add to it, the tools the client may declare (or the tools the server supplies), and
caps: estimated input tokens, messages, output tokens, and ranges of the sampling parameters.
Each entry is checked once at ``init_app`` into a :class:`ProfileConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..contract.request import parse_tools
from ..errors import ConfigError, ProxyError
from .checks import compile_models, integer, number
from .providers import ProviderConfig, parse_attachments

CLIENT_SYSTEM = ("forbid", "append", "allow")
RANGED = ("temperature", "top_p", "top_k")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = {
    "provider",
    "model",
    "system",
    "client_system",
    "tools",
    "server_tools",
    "max_input_tokens",
    "max_messages",
    "max_tokens",
    "attachments",
    "max_attachment_bytes",
    *RANGED,
}


@dataclass(frozen=True)
class ProfileConfig:
    name: str
    provider: str
    models: tuple[str, ...]
    system: str | None = None
    client_system: str = "forbid"
    tools: tuple[str, ...] | None = ()  #: names the client may declare; None: any
    server_tools: tuple[Mapping[str, Any], ...] = ()  #: tools the server adds (the client may declare none)
    max_input_tokens: int | None = None
    max_messages: int | None = None
    max_tokens: int | None = None
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: attachment kinds the profile allows (within its provider's); None: the provider's
    attachments: frozenset[str] | None = None
    max_attachment_bytes: int | None = None  #: stricter than the provider's when both are set
    _exact: frozenset[str] = field(default=frozenset(), repr=False)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def allows(self, model: str) -> bool:
        return model in self._exact or (self._pattern is not None and self._pattern.fullmatch(model) is not None)

    @property
    def default_model(self) -> str | None:
        """The model a request without one gets: the profile's only model, when it names one."""
        return self.models[0] if len(self.models) == 1 and self.models[0] in self._exact else None


def parse_profiles(key: str, v: Any, providers: Mapping[str, ProviderConfig]) -> dict[str, ProfileConfig]:
    if not v:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(key, f"expected a dict of name -> options, got {type(v).__name__}")
    return {name: _profile(f"{key}[{name!r}]", name, entry, providers) for name, entry in v.items()}


def _profile(key: str, name: Any, entry: Any, providers: Mapping[str, ProviderConfig]) -> ProfileConfig:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError("LLM_PROXY_PROFILES", f"{name!r} is not a usable profile name (letters, digits, '_', '-', '.')")
    if not isinstance(entry, Mapping):
        raise ConfigError(key, f"expected a dict, got {type(entry).__name__}")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ConfigError(key, f"unknown option(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    provider = entry.get("provider")
    if not isinstance(provider, str) or provider not in providers:
        raise ConfigError(f"{key}.provider", f"must name one of LLM_PROXY_PROVIDERS ({sorted(providers)}), got {provider!r}")
    models = entry.get("model")
    if isinstance(models, str):
        models = [models]
    exact, pattern = compile_models(f"{key}.model", models)
    outside = sorted(m for m in exact if not providers[provider].allows(m))
    if outside:
        raise ConfigError(f"{key}.model", f"{outside} not in the allow-list of provider {provider!r}")
    system = entry.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise ConfigError(f"{key}.system", "expected a non-empty string")
    client_system = entry.get("client_system", "forbid")
    if client_system not in CLIENT_SYSTEM:
        raise ConfigError(f"{key}.client_system", f"must be one of {list(CLIENT_SYSTEM)}, got {client_system!r}")
    tools = entry.get("tools", [])
    if tools == "*":
        tools = None
    elif not isinstance(tools, (list, tuple)) or not all(isinstance(t, str) and t for t in tools):
        raise ConfigError(f"{key}.tools", "expected a list of tool names the client may declare, or '*' for any")
    try:
        server_tools = parse_tools(entry.get("server_tools")) or []
    except ProxyError as exc:  # names the tool: "tools[1].name: must not be empty"
        raise ConfigError(f"{key}.server_tools", exc.message.replace("tools", "server_tools", 1)) from None
    if server_tools and tools:
        raise ConfigError(f"{key}.tools", "a profile either lets the client declare tools or supplies server_tools, not both")
    ranges: dict[str, tuple[float, float]] = {}
    for param in RANGED:
        if entry.get(param) is None:
            continue
        bounds = entry[param]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ConfigError(f"{key}.{param}", f"expected [lowest, highest], got {bounds!r}")
        lo, hi = (number(f"{key}.{param}", b) for b in bounds)
        if lo > hi:  # type: ignore[operator]
            raise ConfigError(f"{key}.{param}", f"the lowest value {lo} is above the highest {hi}")
        ranges[param] = (lo, hi)  # type: ignore[assignment]
    return ProfileConfig(
        name=name,
        provider=provider,
        models=tuple(models or ()),
        system=system,
        client_system=client_system,
        tools=None if tools is None else tuple(tools),
        server_tools=tuple(dict(t) for t in server_tools),
        max_input_tokens=integer(f"{key}.max_input_tokens", entry.get("max_input_tokens"), minimum=1, optional=True),
        max_messages=integer(f"{key}.max_messages", entry.get("max_messages"), minimum=1, optional=True),
        max_tokens=integer(f"{key}.max_tokens", entry.get("max_tokens"), minimum=1, optional=True),
        ranges=ranges,
        attachments=None if entry.get("attachments") is None else parse_attachments(f"{key}.attachments", entry["attachments"]),
        max_attachment_bytes=integer(f"{key}.max_attachment_bytes", entry.get("max_attachment_bytes"), minimum=1, optional=True),
        _exact=exact,
        _pattern=pattern,
    )
