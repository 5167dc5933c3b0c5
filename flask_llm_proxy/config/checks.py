"""Small checkers of configuration values: each takes the key and a value, returns the parsed form,
and raises :class:`ConfigError` naming the key and what is wrong (never quoting a secret)."""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

RATE_RE = re.compile(r"^\s*(\d+)\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*$", re.IGNORECASE)

_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def boolean(key: str, v: Any) -> bool:
    """Explicit words only: an empty ``LLM_PROXY_REQUIRE_AUTH=`` must not switch auth off."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):  # JSON from the environment: LLM_PROXY_METRICS=1
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return v.strip().lower() in _TRUE_WORDS
    raise ConfigError(key, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {v!r}")


def integer(key: str, v: Any, *, minimum: int = 0, maximum: int | None = None, optional: bool = False) -> int | None:
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


def number(key: str, v: Any, *, minimum: float = 0.0, maximum: float | None = None, optional: bool = False) -> float | None:
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
    if maximum is not None and v > maximum:
        raise ConfigError(key, f"must be <= {maximum}, got {v}")
    return float(v)


def rate(key: str, v: Any) -> str | None:
    if v in (None, "", False):
        return None
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a rate string like '60/minute' or None, got {v!r}")
    for part in re.split(r"[;,]", v):
        m = RATE_RE.match(part)
        if not m:
            raise ConfigError(key, f"{part.strip()!r} is not a rate like '60/minute' or '200000 per day'")
        if int(m.group(1)) == 0 or (m.group(3) and int(m.group(3)) == 0):  # 0/minute blocks all; 10/0 minute none
            raise ConfigError(key, f"{part.strip()!r}: the amount and the period must be at least 1 (None turns it off)")
    return v


def str_list(key: str, v: Any) -> tuple[str, ...]:
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


def url_prefix(key: str, v: Any) -> str:
    if not isinstance(v, str) or (v and not v.startswith("/")) or v.endswith("/") and v != "/":
        raise ConfigError(key, f"must start with '/' and not end with '/', got {v!r}")
    return "" if v == "/" else v


_BUDGET_KEYS = {"daily_usd", "monthly_usd", "daily_tokens", "monthly_tokens"}


def budgets(key: str, v: Any) -> dict[str, dict[str, float | None]]:
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
            k: number(f"{key}[{ident!r}].{k}", lim, optional=True) for k, lim in limits.items()
        }
    return out


def pricing(key: str, v: Any) -> dict[str, dict[str, float] | None]:
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
        out[model] = {k: number(f"{key}[{model!r}].{k}", p) for k, p in price.items()}  # type: ignore[misc]
    return out


def addresses(key: str, v: Any) -> tuple[str, ...]:
    """Addresses or CIDR networks, checked now: metrics.address_allowed skips an entry it cannot
    parse, so a typo like "10.0.0.0/33" would otherwise lock everyone out without a word."""
    entries = str_list(key, v)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            hint = " (host names are not resolved: use 127.0.0.1 and ::1)" if entry.strip().lower() == "localhost" else ""
            raise ConfigError(key, f"{entry!r} is not an IP address or CIDR network{hint}") from None
    return entries


def usage_store(key: str, v: Any) -> str | None:
    """Exactly the URIs ledger.open_store understands, so a wrong one names the key at init."""
    if v in (None, ""):
        return None
    if isinstance(v, str):
        if v == "none" or v.startswith(("redis://", "rediss://", "unix://")):
            return v
        if v.startswith("sqlite:///"):
            if v == "sqlite:///":
                raise ConfigError(key, "'sqlite:///' needs a file: 'sqlite:///usage.sqlite3' (in the instance folder) or an absolute path")
            return v
    raise ConfigError(key, f"expected None, 'sqlite:///path', 'redis://...', 'rediss://...', 'unix://...' or 'none', got {v!r}")


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def cache_url(key: str, v: Any) -> str | None:
    """``memory://`` (optionally ``?size=<bytes>``) or a Redis URL; the size is checked here."""
    if v in (None, ""):
        return None
    if isinstance(v, str):
        if v.startswith(_REDIS_SCHEMES):
            return v
        if v == "memory://" or v.startswith("memory://?"):
            from urllib.parse import parse_qs

            query = parse_qs(v.partition("?")[2], keep_blank_values=True)
            unknown = set(query) - {"size"}
            if unknown:
                raise ConfigError(key, f"unknown option(s) {sorted(unknown)} in memory://; known: size")
            if "size" in query:
                integer(key + " (size)", query["size"][-1], minimum=1024)
            return v
    raise ConfigError(key, f"expected None, 'memory://', 'memory://?size=<bytes>' or 'redis://host:port/db', got {v!r}")


def queue_url(key: str, v: Any) -> str | None:
    if v in (None, ""):
        return None
    if isinstance(v, str) and (v == "memory://" or v.startswith(_REDIS_SCHEMES)):
        return v
    raise ConfigError(key, f"expected None, 'memory://' or 'redis://host:port/db', got {v!r}")


def one_of(*choices: str) -> Any:
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise ConfigError(key, f"expected one of {list(choices)}, got {v!r}")
        return v

    return check


def concurrency(key: str, v: Any) -> int | dict[str, int] | None:
    """One cap for every provider, or ``{provider: cap}`` (the names are checked against the
    providers by ``load_settings``)."""
    if v in (None, ""):
        return None
    if isinstance(v, Mapping):
        return {str(name): integer(f"{key}[{name!r}]", cap, minimum=1) for name, cap in v.items()}  # type: ignore[misc]
    return integer(key, v, minimum=1)
