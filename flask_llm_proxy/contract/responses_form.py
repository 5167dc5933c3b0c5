"""The OpenAI Responses form of the neutral request (``input`` instead of ``messages``).

agentary-js sends this form when its ``modelProvider`` is ``openai``. The body is forwarded to
``/responses`` field by field after checks; ``input`` items as the client wrote them, after the
attachments among their parts were checked like the blocks of the messages form. A field the
Responses API does not take is a 400 naming it, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import options
from .blocks import Policy, url_source
from .values import fail, key_path, number, only_keys, shown, string

MAX_TOOLS = 128

#: the Responses API fields forwarded as they are
#: (https://platform.openai.com/docs/api-reference/responses/create)
FORWARDED = (
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "store",
    "truncation",
)
#: accepted and translated (``max_tokens`` -> ``max_output_tokens``, ``response_format`` ->
#: ``text.format``), or the proxy's own (``stream``, ``include_reasoning``), or agentary-js's flags
OWN = ("model", "max_tokens", "max_new_tokens", "response_format", "stream", "include_reasoning", "enable_thinking", "deterministic")
FIELDS = FORWARDED + OWN
#: why a field of the messages form is refused here
_NOT_HERE = {
    "stop": "the Responses API has no stop sequences",
    "seed": "the Responses API takes no seed",
    "top_k": "the Responses API has no top_k",
    "repetition_penalty": "the Responses API has no repetition_penalty",
    "thinking": "is Anthropic's; the Responses API takes 'reasoning': {\"effort\": ...}",
    "reasoning_effort": "the Responses API takes 'reasoning': {\"effort\": ...}",
}


def _check_parts(inp: list[Any], policy: Policy, found: list[tuple[str, dict[str, Any]]]) -> None:
    """Image and file parts: media type, first bytes, the host's limits. They are forwarded
    unchanged; ``found`` gets their neutral form for the API's own limits (providers/responses.py)."""
    for i, item in enumerate(inp):
        content = item.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") not in ("input_image", "input_file"):
                continue
            path = f"input[{i}].content[{j}]"
            kind = "image" if part["type"] == "input_image" else "document"
            if kind not in policy.kinds:
                raise fail(path, f"this provider takes no {kind} attachments (the host turned them off)")
            if "file_id" in part:  # the files of the proxy's API key: another user's upload could be named
                raise fail(f"{path}.file_id", "uploaded-file references are not accepted (the API key is shared by all users)")
            if kind == "image":
                only_keys(part, path, ("type", "image_url", "detail"))
                src = url_source(part.get("image_url"), f"{path}.image_url", kind, policy)
                if part.get("detail") is not None and part["detail"] not in ("auto", "low", "high"):
                    raise fail(f"{path}.detail", "must be 'auto', 'low' or 'high'")
            else:
                only_keys(part, path, ("type", "file_data", "file_url", "filename"))
                if ("file_data" in part) == ("file_url" in part):
                    raise fail(path, "needs one of 'file_data' (a data URL) or 'file_url'")
                name = "file_data" if "file_data" in part else "file_url"
                src = url_source(part[name], f"{path}.{name}", kind, policy)
                if (name == "file_data") != (src["type"] == "base64"):
                    raise fail(f"{path}.{name}", "file_data is a data URL, file_url an http(s) URL")
                if part.get("filename") is not None:
                    string(part["filename"], f"{path}.filename", allow_empty=False, max_len=255)
            found.append((path, {"type": kind, "source": src}))


def _input(inp: Any, max_messages: int) -> Any:
    if isinstance(inp, str):
        if not inp.strip():
            raise fail("input", "must not be empty")
        return inp
    if not isinstance(inp, list) or not inp:
        raise fail("input", "must be a non-empty string or list")
    if len(inp) > max_messages:
        raise fail("input", f"has {len(inp)} items; at most {max_messages} are allowed")
    for i, item in enumerate(inp):
        if not isinstance(item, Mapping):
            raise fail(f"input[{i}]", "must be an object")
        role = item.get("role")
        if role is not None and role not in ("system", "developer", "user", "assistant"):
            raise fail(f"input[{i}].role", f"unknown role {shown(role)}")
        if role is None and not isinstance(item.get("type"), str):
            raise fail(f"input[{i}]", "needs a 'role' or a 'type'")
        c = item.get("content")
        if c is not None and not isinstance(c, (str, list)):
            raise fail(f"input[{i}].content", "must be a string or a list of parts")
    return inp


def _text_format(rf: dict[str, Any]) -> dict[str, Any]:
    """Chat Completions' ``response_format`` in the Responses API's ``text.format`` form, where
    the schema's fields sit in ``format`` itself
    (https://platform.openai.com/docs/guides/structured-outputs?api-mode=responses)."""
    if rf["type"] != "json_schema":
        return {"type": rf["type"]}
    return {"type": "json_schema", **rf["json_schema"]}


def parse_responses_body(
    body: Mapping[str, Any], max_messages: int, cap: int, policy: Policy, max_tokens: Any
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The body to forward, and the attachments found in ``input`` (for the API's limits).
    ``max_tokens``: the messages form's parser of the synonyms (one rule for both forms)."""
    for key in body:
        if key not in FIELDS:
            raise fail(
                key_path("", key),
                _NOT_HERE.get(key, f"is not a field of the Responses form the proxy knows; known: {', '.join(sorted(FIELDS))}"),
            )
    options.agentary_flags(body)
    out: dict[str, Any] = {"input": _input(body.get("input"), max_messages)}
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(out["input"], list):
        _check_parts(out["input"], policy, found)
    if body.get("instructions") is not None:
        out["instructions"] = string(body["instructions"], "instructions")
    mt = max_tokens(body, cap, "max_output_tokens", "max_tokens", "max_new_tokens")
    if mt is not None:
        out["max_output_tokens"] = mt
    for name, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        val = number(body, name, lo, hi)
        if val is not None:
            out[name] = val
    if body.get("tools") is not None:
        tools = body["tools"]
        if (
            not isinstance(tools, list)
            or len(tools) > MAX_TOOLS
            or not all(isinstance(t, Mapping) and isinstance(t.get("type"), str) for t in tools)
        ):
            raise fail("tools", f"must be a list of at most {MAX_TOOLS} tool objects with a 'type'")
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        tc = body["tool_choice"]
        if not (tc in ("auto", "none", "required") or isinstance(tc, Mapping)):
            raise fail("tool_choice", "must be 'auto', 'none', 'required' or an object")
        out["tool_choice"] = tc
    for name, typ in (("parallel_tool_calls", bool), ("store", bool), ("reasoning", Mapping), ("text", Mapping)):
        if body.get(name) is not None:
            if not isinstance(body[name], typ):
                raise fail(name, f"has the wrong type ({type(body[name]).__name__})")
            out[name] = body[name]
    if body.get("truncation") is not None:
        if body["truncation"] not in ("auto", "disabled"):
            raise fail("truncation", "must be 'auto' or 'disabled'")
        out["truncation"] = body["truncation"]
    rf = options.response_format(body.get("response_format"))
    if rf is not None:
        if "format" in out.get("text", {}):
            raise fail("response_format", "conflicts with text.format; send one of them")
        out["text"] = {**out.get("text", {}), "format": _text_format(rf)}
    return out, found
