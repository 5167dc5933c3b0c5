"""Top-level fields beyond the conversation: reasoning, structured output, and the fields
agentary-js sends for its on-device models.

Each is checked here for its shape; what a provider does with it (translate, pass through, or a
400 naming it) is decided in its module under ``providers/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .values import boolean, fail, integer, only_keys, string

#: Anthropic's minimum thinking budget (https://docs.claude.com/en/docs/build-with-claude/extended-thinking)
MIN_THINKING_BUDGET = 1024
_EFFORT = re.compile(r"[a-z]{1,16}")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def thinking(v: Any) -> dict[str, Any] | None:
    """Anthropic's ``thinking``: ``{"type": "enabled", "budget_tokens": N}``, ``{"type":
    "disabled"}`` or ``{"type": "adaptive"}``."""
    if v is None:
        return None
    if not isinstance(v, Mapping) or v.get("type") not in ("enabled", "disabled", "adaptive"):
        raise fail("thinking", 'must be {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} or {"type": "disabled"}')
    if v["type"] == "disabled":
        only_keys(v, "thinking", ("type",))
        return {"type": "disabled"}
    only_keys(v, "thinking", ("type", "budget_tokens", "display") if v["type"] == "enabled" else ("type", "display"))
    out: dict[str, Any] = {"type": v["type"]}
    if v["type"] == "enabled":
        budget = integer(v, "budget_tokens", MIN_THINKING_BUDGET, 2**31 - 1, path="thinking.budget_tokens")
        if budget is None:
            raise fail("thinking.budget_tokens", f"is required with type 'enabled' (at least {MIN_THINKING_BUDGET})")
        out["budget_tokens"] = budget
    if v.get("display") is not None:
        if v["display"] not in ("summarized", "omitted"):
            raise fail("thinking.display", "must be 'summarized' or 'omitted'")
        out["display"] = v["display"]
    return out


def reasoning_effort(v: Any) -> str | None:
    """OpenAI's ``reasoning_effort`` (``minimal``, ``low``, ``medium``, ``high``... which values a
    model takes is the model's: https://platform.openai.com/docs/guides/reasoning). Any short
    lowercase word passes, so a new level needs no proxy release; OpenAI checks the value."""
    if v is None:
        return None
    if not isinstance(v, str) or not _EFFORT.fullmatch(v):
        raise fail("reasoning_effort", "must be a level such as 'low', 'medium' or 'high'")
    return v


def response_format(v: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` (https://platform.openai.com/docs/guides/structured-outputs):
    ``{"type": "text" | "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name",
    "schema", "strict"?, "description"?}}``."""
    if v is None:
        return None
    if not isinstance(v, Mapping) or v.get("type") not in ("text", "json_object", "json_schema"):
        raise fail(
            "response_format",
            'must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
        )
    if v["type"] != "json_schema":
        only_keys(v, "response_format", ("type",))
        return {"type": v["type"]}
    only_keys(v, "response_format", ("type", "json_schema"))
    spec = v.get("json_schema")
    path = "response_format.json_schema"
    if not isinstance(spec, Mapping):
        raise fail(path, "must be an object with 'name' and 'schema'")
    only_keys(spec, path, ("name", "schema", "strict", "description"))
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise fail(f"{path}.name", "is required: 1 to 64 letters, digits, '_' or '-'")
    out: dict[str, Any] = {"name": name}
    if spec.get("schema") is not None:
        if not isinstance(spec["schema"], Mapping):
            raise fail(f"{path}.schema", "must be a JSON schema object")
        out["schema"] = dict(spec["schema"])
    if spec.get("strict") is not None:
        out["strict"] = boolean(spec["strict"], f"{path}.strict")
    if spec.get("description") is not None:
        out["description"] = string(spec["description"], f"{path}.description")
    return {"type": "json_schema", "json_schema": out}


def agentary_flags(body: Mapping[str, Any]) -> None:
    """agentary-js's generation arguments for its on-device models that reach the proxy too.

    ``enable_thinking`` (its workflows send ``false`` by default) and ``deterministic`` are
    accepted when ``false``: nothing is asked then, and the provider's default is what the flag
    means. ``true`` has no cloud counterpart the proxy could send without guessing (a thinking
    budget, a sampling promise no cloud API makes), so it is a 400 naming what to send instead.
    """
    if body.get("enable_thinking") is not None:
        if boolean(body["enable_thinking"], "enable_thinking"):
            raise fail(
                "enable_thinking",
                "true has no cloud counterpart without a budget: send 'thinking' "
                '({"type": "enabled", "budget_tokens": N}) for Anthropic models or '
                "'reasoning_effort' for OpenAI models",
            )
        if body.get("thinking") is not None and body["thinking"] != {"type": "disabled"}:
            raise fail("enable_thinking", "false conflicts with 'thinking'; send one of them")
    if body.get("deterministic") is not None and boolean(body["deterministic"], "deterministic"):
        raise fail("deterministic", "true cannot be promised by a cloud API; send temperature: 0 (and a seed where the provider takes one)")


def include_reasoning(body: Mapping[str, Any]) -> bool:
    v = body.get("include_reasoning")
    return False if v is None else boolean(v, "include_reasoning")
