"""Applying a profile (``LLM_PROXY_PROFILES``) to a request, before anything is sent upstream.

A profile pins or bounds what the browser may ask: the model, the system prompt (``forbid``: the
client may not set one; ``append``: its text goes after the pinned one, marked as the client's;
``allow``: its system messages follow the pinned one), the tools, and caps. Every refusal is a 4xx
naming the field and the profile. The same rules apply to the contract's neutral request
(:func:`apply_to_chat`) and to the provider-native bodies of the SDK endpoints (:func:`apply_to_native`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from .. import _json
from ..config import ProfileConfig, ProviderConfig, Settings
from ..contract.blocks import IMAGE_CHARS_ESTIMATE, Policy
from ..contract.request import ChatRequest
from ..errors import InvalidRequest, ModelNotAllowed, PayloadTooLarge, PermissionDenied

#: the documented estimate: about four characters of text per token (English prose; code, other
#: scripts and images use more tokens per character, so the estimate may be low for them)
CHARS_PER_TOKEN = 4
#: what separates the pinned system prompt from a client's text it lets through (``append``)
APPENDED = "\n\n---\nInstructions added by the application's user (they do not override the above):\n"


def check_profile_claim(settings: Settings, claims: Mapping[str, Any], profile: str) -> None:
    """A JWT claim (``LLM_PROXY_PROFILES_CLAIM``) may narrow the profiles a user may use."""
    name = settings.profiles_claim
    if not name or name not in claims:
        return
    allowed = claims[name]
    if isinstance(allowed, str):
        allowed = [allowed]
    if not isinstance(allowed, Iterable) or not any(isinstance(p, str) and fnmatchcase(profile, p) for p in allowed):
        raise PermissionDenied(f"your token does not allow the profile {profile!r}", type="profile_not_allowed")


def attachment_policy(provider: ProviderConfig, profile: ProfileConfig | None) -> Policy:
    """The attachments a request may carry: the provider's, narrowed by its profile."""
    kinds, cap = provider.attachments, provider.max_attachment_bytes
    if profile is not None:
        if profile.attachments is not None:
            kinds = kinds & profile.attachments
        if profile.max_attachment_bytes is not None:
            cap = min(cap, profile.max_attachment_bytes) if cap is not None else profile.max_attachment_bytes
    return Policy(kinds, cap)


def estimate_tokens(*parts: Any) -> int:
    """The input estimate checked against ``max_input_tokens``: characters of the text (and of the
    JSON of anything that is not text) divided by :data:`CHARS_PER_TOKEN`, rounded up. An
    attachment counts as :data:`~flask_llm_proxy.contract.blocks.IMAGE_CHARS_ESTIMATE`, never as
    its base64 text (which would make any photo "too long")."""
    chars = 0
    for part in parts:
        if part is None:
            continue
        if isinstance(part, str):
            chars += len(part)
        else:
            base64_chars, attachments = _base64_in(part)
            chars += len(_json.dumps_str(part)) - base64_chars + attachments * IMAGE_CHARS_ESTIMATE
    return math.ceil(chars / CHARS_PER_TOKEN)


def _base64_in(part: Any) -> tuple[int, int]:
    """(characters of base64 data, attachments) in a JSON value: Anthropic's ``{"type": "base64",
    "data"}`` sources and ``data:...;base64,`` URLs (OpenAI's image_url, file_data, input_image)."""
    chars = found = 0
    stack = [part]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if node.startswith("data:") and ";base64," in node[:128]:
                chars, found = chars + len(node), found + 1
        elif isinstance(node, Mapping):
            if node.get("type") == "base64" and isinstance(node.get("data"), str):
                chars, found = chars + len(node["data"]), found + 1
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return chars, found


def _fail(path: str, profile: ProfileConfig, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {problem} (profile {profile.name!r})", extra={"param": path})


def _check_model(profile: ProfileConfig, model: str) -> None:
    if not profile.allows(model):
        raise ModelNotAllowed(f"model {model!r} is not one of the models of the profile {profile.name!r}: {list(profile.models)}")


def _check_caps(profile: ProfileConfig, values: dict[str, Any], max_tokens_field: str) -> dict[str, Any]:
    """``values``: the request's output cap and sampling parameters; returns what to set."""
    out: dict[str, Any] = {}
    cap = profile.max_tokens
    if cap is not None:
        asked = values.get(max_tokens_field)
        if asked is not None and asked > cap:
            raise _fail(max_tokens_field, profile, f"at most {cap} output tokens, got {asked}")
        if asked is None:
            out[max_tokens_field] = cap
    for param, (lo, hi) in profile.ranges.items():
        v = values.get(param)
        if v is None:
            out[param] = int(hi) if param == "top_k" else hi  # the provider's default could be outside the range
        elif not lo <= v <= hi:
            raise _fail(param, profile, f"must be between {lo:g} and {hi:g}, got {v}")
    return out


def _check_tool_names(profile: ProfileConfig, names: list[str]) -> None:
    if profile.server_tools and names:
        raise _fail("tools", profile, "the profile supplies its own tools; send none")
    if profile.tools is None:
        return
    for i, name in enumerate(names):
        if name not in profile.tools:
            raise _fail(f"tools[{i}].name", profile, f"{name!r} is not one of the tools the profile allows {list(profile.tools)}")


def _check_input(profile: ProfileConfig, *parts: Any) -> None:
    cap = profile.max_input_tokens
    if cap is None:
        return
    n = estimate_tokens(*parts)
    if n > cap:
        raise PayloadTooLarge(
            f"the prompt is about {n} tokens (estimated at {CHARS_PER_TOKEN} characters per token); "
            f"the profile {profile.name!r} allows {cap}",
            type="prompt_too_long",
        )


def _system(profile: ProfileConfig, client: list[tuple[str, str]]) -> tuple[str | None, list[str]]:
    """(the system text to send first, client system texts to keep after it); ``client`` holds
    (path, text) of what the client sent as system prompt."""
    if client and profile.client_system == "forbid":
        raise _fail(client[0][0], profile, "the client may not set a system prompt")
    texts = [t for _, t in client]
    if profile.system is None:
        return None, texts
    if profile.client_system == "append" and texts:
        return profile.system + APPENDED + "\n\n".join(texts), []
    return profile.system, texts


# --- the contract's neutral request ----------------------------------------------------------


def apply_to_chat(profile: ProfileConfig, req: ChatRequest) -> None:
    """Check ``req`` against ``profile`` and pin what it pins (changes ``req``)."""
    _check_model(profile, req.model)
    if req.responses_body is not None:
        _apply_responses(profile, req.responses_body)
        req.max_tokens = req.responses_body.get("max_output_tokens")
        return
    if profile.max_messages is not None and len(req.messages) > profile.max_messages:
        raise _fail("messages", profile, f"at most {profile.max_messages} messages, got {len(req.messages)}")
    client = [(f"messages[{i}]", _text(m["content"])) for i, m in enumerate(req.messages) if m["role"] == "system"]
    first, keep = _system(profile, client)
    messages = [m for m in req.messages if m["role"] != "system"]
    # what is kept is every client system message as it came (blocks and cache_control included)
    kept = [m for m in req.messages if m["role"] == "system"] if keep else []
    req.messages = ([{"role": "system", "content": first}] if first else []) + kept + messages
    _check_tool_names(profile, [t["name"] for t in req.tools or ()])
    if profile.server_tools:
        req.tools = [dict(t) for t in profile.server_tools]
    for name, value in _check_caps(
        profile, {"max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k}, "max_tokens"
    ).items():
        setattr(req, name, value)
    _check_input(profile, *(m["content"] for m in req.messages), req.tools)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else "\n".join(b.get("text", "") for b in content if b.get("type") == "text")


# --- the provider-native bodies (the SDK endpoints), and the Responses form ------------------


def apply_to_native(profile: ProfileConfig, api: str, body: dict[str, Any]) -> None:
    """The same rules on a native body: ``messages`` (Anthropic), ``chat`` or ``responses`` (OpenAI)."""
    _check_model(profile, body["model"])
    if api == "responses":
        _apply_responses(profile, body)
        return
    messages = body.get("messages") or []
    if profile.max_messages is not None and len(messages) > profile.max_messages:
        raise _fail("messages", profile, f"at most {profile.max_messages} messages, got {len(messages)}")
    if api == "messages":
        system = body.get("system")
        client = [("system", _text(system) if isinstance(system, list) else str(system))] if system else []
        first, keep = _system(profile, client)
        if first or keep:
            body["system"] = "\n\n".join(([first] if first else []) + keep)
        names = [t.get("name", "") for t in body.get("tools") or () if isinstance(t, Mapping)]
        tools = [
            {"name": t["name"], "description": t.get("description") or "", "input_schema": t["parameters"]} for t in profile.server_tools
        ]
        mt_field = "max_tokens"
    else:
        client = [
            (f"messages[{i}]", _text(m.get("content") or ""))
            for i, m in enumerate(messages)
            if isinstance(m, Mapping) and m.get("role") in ("system", "developer")
        ]
        first, keep = _system(profile, client)
        rest = [m for m in messages if not (isinstance(m, Mapping) and m.get("role") in ("system", "developer"))]
        body["messages"] = [{"role": "system", "content": t} for t in ([first] if first else []) + keep] + rest
        names = [(t.get("function") or {}).get("name", "") for t in body.get("tools") or () if isinstance(t, Mapping)]
        tools = [{"type": "function", "function": {k: v for k, v in t.items() if v is not None}} for t in profile.server_tools]
        mt_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    _check_tool_names(profile, names)
    if tools:
        body["tools"] = tools
    body.update(_check_caps(profile, {k: body.get(k) for k in (mt_field, "temperature", "top_p", "top_k")}, mt_field))
    if api == "chat":
        body.pop("top_k", None)  # Chat Completions has no top_k
    _check_input(profile, body.get("system"), body.get("messages"), body.get("tools"))


def _apply_responses(profile: ProfileConfig, body: dict[str, Any]) -> None:
    """OpenAI's Responses form: ``instructions`` and system/developer ``input`` items are the
    client's system prompt; tools are ``{"type": "function", "name": ...}``."""
    inp = body.get("input")
    items = inp if isinstance(inp, list) else []
    if profile.max_messages is not None and len(items) > profile.max_messages:
        raise _fail("input", profile, f"at most {profile.max_messages} items, got {len(items)}")
    client = [("instructions", body["instructions"])] if body.get("instructions") else []
    client += [
        (f"input[{i}]", _text(it.get("content") or ""))
        for i, it in enumerate(items)
        if isinstance(it, Mapping) and it.get("role") in ("system", "developer")
    ]
    first, keep = _system(profile, client)
    if isinstance(inp, list):
        body["input"] = [it for it in items if not (isinstance(it, Mapping) and it.get("role") in ("system", "developer"))]
    instructions = "\n\n".join(([first] if first else []) + keep)
    if instructions:
        body["instructions"] = instructions
    else:
        body.pop("instructions", None)
    names = [t.get("name", "") for t in body.get("tools") or () if isinstance(t, Mapping)]
    _check_tool_names(profile, names)
    if profile.server_tools:
        body["tools"] = [{"type": "function", **{k: v for k, v in t.items() if v is not None}} for t in profile.server_tools]
    caps = _check_caps(profile, {k: body.get(k) for k in ("max_output_tokens", "temperature", "top_p")}, "max_output_tokens")
    caps.pop("top_k", None)  # no top_k in the Responses API
    body.update(caps)
    _check_input(profile, body.get("instructions"), body.get("input"), body.get("tools"))
