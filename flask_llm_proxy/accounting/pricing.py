"""Model prices (USD per million tokens) and the cost of one request.

The shipped table holds the public list prices of Anthropic and OpenAI models as published on
their pricing pages, checked on :data:`PRICES_CHECKED`. ``LLM_PROXY_PRICING`` overrides or adds
entries (exact names or fnmatch patterns; ``None``: no price): its entries are looked up before the
shipped ones, so ``"claude-sonnet-4-5*"`` there also prices ``claude-sonnet-4-5``. A model without a
price costs ``None`` (and a warning is logged once per model), never a guess.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("flask_llm_proxy")

PRICES_CHECKED = "2026-11-26"


def _family(names: list[str], inp: float, out: float, cache_read: float, cache_write: float | None = None) -> dict[str, dict[str, float]]:
    """A model, its dated snapshots (``name-2025...``) and its ``-latest`` alias share a price."""
    price = {"input": inp, "output": out, "cache_read": cache_read}
    if cache_write is not None:
        price["cache_write"] = cache_write
    table: dict[str, dict[str, float]] = {}
    for name in names:
        for key in (name, f"{name}-20*", f"{name}-latest"):
            table[key] = price
    return table


DEFAULT_PRICES: dict[str, dict[str, float]] = {
    # Anthropic: base input, output, cache hits, 5-minute cache writes
    **_family(["claude-opus-5", "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6", "claude-opus-4-5"], 5.0, 25.0, 0.50, 6.25),
    **_family(["claude-opus-4-1", "claude-opus-4-0", "claude-opus-4", "claude-3-opus"], 15.0, 75.0, 1.50, 18.75),
    **_family(
        ["claude-sonnet-4-6", "claude-sonnet-4-5", "claude-sonnet-4-0", "claude-sonnet-4", "claude-3-7-sonnet", "claude-3-5-sonnet"],
        3.0,
        15.0,
        0.30,
        3.75,
    ),
    **_family(["claude-haiku-4-5"], 1.0, 5.0, 0.10, 1.25),
    **_family(["claude-3-5-haiku"], 0.80, 4.0, 0.08, 1.0),
    **_family(["claude-3-haiku"], 0.25, 1.25, 0.03, 0.30),
    # OpenAI: input, output, cached input
    **_family(["gpt-5.5"], 5.0, 30.0, 0.50),
    **_family(["gpt-5.4"], 2.50, 15.0, 0.25),
    **_family(["gpt-5.4-mini"], 0.75, 4.50, 0.075),
    **_family(["gpt-5.4-nano"], 0.20, 1.25, 0.02),
    **_family(["gpt-5.1", "gpt-5"], 1.25, 10.0, 0.125),
    **_family(["gpt-5-mini"], 0.25, 2.0, 0.025),
    **_family(["gpt-5-nano"], 0.05, 0.40, 0.005),
    **_family(["gpt-4.1"], 2.0, 8.0, 0.50),
    **_family(["gpt-4.1-mini"], 0.40, 1.60, 0.10),
    **_family(["gpt-4.1-nano"], 0.10, 0.40, 0.025),
    **_family(["gpt-4o"], 2.50, 10.0, 1.25),
    "gpt-4o-2024-05-13": {"input": 5.0, "output": 15.0},  # the first snapshot kept its launch price, no cache rate
    **_family(["gpt-4o-mini"], 0.15, 0.60, 0.075),
    **_family(["o3"], 2.0, 8.0, 0.50),
    **_family(["o4-mini"], 1.10, 4.40, 0.275),
}


class _Layer:
    """One table: exact names are a dict lookup; patterns are tried most specific (longest) first."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.exact = {k: v for k, v in table.items() if not _is_pattern(k)}
        self.patterns = sorted(
            ((k, re.compile(fnmatch.translate(k)), v) for k, v in table.items() if _is_pattern(k)),
            key=lambda t: -len(t[0]),
        )

    def find(self, model: str) -> tuple[bool, Mapping[str, float] | None]:
        """(found, price); a price of ``None`` found is a model declared unpriced."""
        if model in self.exact:
            return True, self.exact[model]
        for _, rx, price in self.patterns:
            if rx.fullmatch(model):
                return True, price
        return False, None


class PriceTable:
    """The host's entries, then the shipped ones: the first that names or matches a model prices it.

    Lookups are cached per model name, so pricing costs one dict lookup per request.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None, *, defaults: bool = True) -> None:
        own = {model: (None if price is None else dict(price)) for model, price in (overrides or {}).items()}
        self._layers = [_Layer(own)] + ([_Layer(DEFAULT_PRICES)] if defaults else [])
        self._cache: dict[str, Mapping[str, float] | None] = {}
        self._warned: set[str] = set()

    def price_of(self, model: str) -> Mapping[str, float] | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        price = None
        for layer in self._layers:
            found, price = layer.find(model)
            if found:
                break
        if len(self._cache) < 10000:  # model names are allow-listed, but stay bounded anyway
            self._cache[model] = price
        return price

    def cost(self, model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> float | None:
        """USD, rounded to the micro-dollar; ``input_tokens`` includes cached prompt tokens."""
        price = self.price_of(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price for model %r: its cost is recorded as null; add it to LLM_PROXY_PRICING", model)
            return None
        uncached = max(0, input_tokens - cache_read - cache_write)
        total = (
            uncached * price["input"]
            + output_tokens * price["output"]
            + cache_read * price.get("cache_read", price["input"])
            + cache_write * price.get("cache_write", price["input"])
        ) / 1_000_000
        return round(total, 6)


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")
