"""The neutral chat request of CONTRACT.md: checked field by field, then held in one shape.

Every error names the field (``messages[2].content[0].text``) so a client developer can fix the
request without reading proxy code. Unknown top-level fields are dropped, never forwarded.
Providers translate a :class:`ChatRequest` into their own API in ``providers/``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InvalidRequest

ROLES = ("system", "user", "assistant")
MAX_MODEL_LEN = 256


def valid_model_name(model: str) -> bool:
    """Model ids are visible characters only: a pattern such as ``claude-*`` in the allow-list
    would otherwise also let ``claude-x\n...`` through to the upstream."""
    return model.isprintable() and " " not in model  # isprintable() is False for every other space
MAX_STOP = 16
MAX_TOOLS = 128


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    stream: bool = True
    #: the OpenAI Responses form (``input`` instead of ``messages``), already filtered
    responses_body: dict[str, Any] | None = None

    def text_for_log(self) -> str:
        if self.responses_body is not None:
            inp = self.responses_body.get("input")
            return inp if isinstance(inp, str) else str(inp)
        parts: list[str] = []
        for m in self.messages:
            c = m["content"]
            if isinstance(c, str):
                parts.append(c)
            else:
                parts.extend(b.get("text", "") for b in c if b["type"] == "text")
        return "\n".join(parts)

    def input_size_hint(self) -> int:
        """Characters of prompt text: the base of the documented token estimate for cut streams."""
        if self.responses_body is not None:
            return len(str(self.responses_body.get("input", ""))) + len(str(self.responses_body.get("instructions", "")))
        return sum(len(m["content"]) if isinstance(m["content"], str) else len(str(m["content"])) for m in self.messages)


def _fail(path: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {problem}", extra={"param": path})


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise _fail(name, f"must be a number, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise _fail(name, f"must be between {lo:g} and {hi:g}, got {v}")
    return float(v)


def _integer(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise _fail(name, f"must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise _fail(name, f"must be between {lo} and {hi}, got {v}")
    return v


def _str(v: Any, path: str, *, allow_empty: bool = True, max_len: int | None = None) -> str:
    if not isinstance(v, str):
        raise _fail(path, f"must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise _fail(path, "must not be empty")
    if max_len is not None and len(v) > max_len:
        raise _fail(path, f"is longer than {max_len} characters")
    return v


def _block(b: Any, path: str, role: str) -> dict[str, Any]:
    if not isinstance(b, Mapping):
        raise _fail(path, "must be an object with a 'type'")
    t = b.get("type")
    if t == "text":
        return {"type": "text", "text": _str(b.get("text"), f"{path}.text", allow_empty=False)}
    if t == "tool_use":
        if role != "assistant":
            raise _fail(path, "tool_use blocks belong to assistant messages")
        args = b.get("arguments", b.get("input", {}))
        if not isinstance(args, Mapping):
            raise _fail(f"{path}.arguments", "must be an object")
        return {
            "type": "tool_use",
            "id": _str(b.get("id"), f"{path}.id", allow_empty=False, max_len=256),
            "name": _str(b.get("name"), f"{path}.name", allow_empty=False, max_len=256),
            "arguments": dict(args),
        }
    if t == "tool_result":
        if role != "user":
            raise _fail(path, "tool_result blocks belong to user messages")
        result = b.get("result", b.get("content", ""))
        if not isinstance(result, str):
            if isinstance(result, (list, dict, int, float, bool)) or result is None:
                from .. import _json

                result = _json.dumps_str(result)
            else:  # pragma: no cover - JSON has no other types
                raise _fail(f"{path}.result", "must be a string or JSON")
        is_error = b.get("is_error", False)
        if not isinstance(is_error, bool):
            raise _fail(f"{path}.is_error", "must be a boolean")
        return {
            "type": "tool_result",
            "tool_use_id": _str(b.get("tool_use_id"), f"{path}.tool_use_id", allow_empty=False, max_len=256),
            "result": result,
            "is_error": is_error,
        }
    raise _fail(f"{path}.type", f"must be 'text', 'tool_use' or 'tool_result', got {t!r}")


def _messages(v: Any, max_messages: int) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise _fail("messages", "must be a non-empty list")
    if len(v) > max_messages:
        raise _fail("messages", f"has {len(v)} messages; at most {max_messages} are allowed")
    out = []
    for i, m in enumerate(v):
        path = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise _fail(path, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise _fail(f"{path}.role", f"must be one of {list(ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, str):
            if not content.strip():
                raise _fail(f"{path}.content", "must not be empty")
        elif isinstance(content, list) and content:
            content = [_block(b, f"{path}.content[{j}]", role) for j, b in enumerate(content)]
            if role == "system" and any(b["type"] != "text" for b in content):
                raise _fail(f"{path}.content", "system messages take text only")
        else:
            raise _fail(f"{path}.content", "must be a non-empty string or a non-empty list of blocks")
        out.append({"role": role, "content": content})
    for m in out:  # a loop, not all(<genexpr>): stopping a generator early raises inside it
        if m["role"] != "system":
            break
    else:
        raise _fail("messages", "needs at least one user message")
    _check_tool_pairs(out)
    return out


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Tool calls and results pair up as both upstream APIs demand, or they answer 400.

    Consecutive messages of one role are one turn (both APIs take them so: OpenAI's one ``tool``
    message per call arrives as one user message per ``tool_result``). Every ``tool_result``
    answers a ``tool_use`` of the assistant turn just before, and every ``tool_use`` is answered in
    the next turn (further text blocks may follow the results). System messages are skipped:
    Anthropic takes them out of ``messages`` into ``system``. Paths use the client's indices.
    """
    turns: list[tuple[str, int, list[tuple[int, int, dict[str, Any]]]]] = []  # (role, first index, blocks)
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        blocks = [(i, j, b) for j, b in enumerate(m["content"])] if isinstance(m["content"], list) else []
        if turns and turns[-1][0] == m["role"]:
            turns[-1][2].extend(blocks)
        else:
            turns.append((m["role"], i, blocks))
    open_calls: dict[str, str] = {}  # tool_use id of the previous turn -> the path of that id
    for _, first, blocks in turns:
        answered = set()
        for i, j, b in blocks:
            if b["type"] == "tool_result":
                tid, path = b["tool_use_id"], f"messages[{i}].content[{j}].tool_use_id"
                if tid not in open_calls:
                    raise _fail(path, f"{tid!r} answers no tool_use of the previous assistant message")
                if tid in answered:
                    raise _fail(path, f"the tool_use {tid!r} is already answered by an earlier tool_result of this turn")
                answered.add(tid)
        for tid, path in open_calls.items():
            if tid not in answered:
                raise _fail(path, f"the tool_use {tid!r} is not answered by a tool_result in the next message (messages[{first}])")
        open_calls = {b["id"]: f"messages[{i}].content[{j}].id" for i, j, b in blocks if b["type"] == "tool_use"}
    if open_calls:  # the conversation ends on an assistant message with tool calls
        tid, path = next(iter(open_calls.items()))
        raise _fail(path, f"the tool_use {tid!r} is not answered: the next message must be a user message with its tool_result")


def parse_tools(v: Any) -> list[dict[str, Any]] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise _fail("tools", "must be a list")
    if len(v) > MAX_TOOLS:
        raise _fail("tools", f"at most {MAX_TOOLS} tools")
    out = []
    seen: dict[str, int] = {}  # tool name -> its index
    for i, t in enumerate(v):
        path = f"tools[{i}]"
        if not isinstance(t, Mapping):
            raise _fail(path, "must be an object with 'name'")
        if t.get("type") == "function" and isinstance(t.get("function"), Mapping):
            t = t["function"]  # accept OpenAI's wrapper too
        params = t.get("parameters", t.get("input_schema", {"type": "object", "properties": {}}))
        if not isinstance(params, Mapping):
            raise _fail(f"{path}.parameters", "must be a JSON schema object")
        desc = t.get("description")
        if desc is not None:
            _str(desc, f"{path}.description")
        name = _str(t.get("name"), f"{path}.name", allow_empty=False, max_len=128)
        if name in seen:
            raise _fail(f"{path}.name", f"{name!r} is already the name of tools[{seen[name]}]; tool names must be unique")
        seen[name] = i
        out.append({"name": name, "description": desc, "parameters": dict(params)})
    return out


def _tool_choice(v: Any) -> Any:
    if v is None:
        return None
    if v in ("auto", "none", "required", "any"):
        return "required" if v == "any" else v
    if isinstance(v, Mapping):
        name = v.get("name")
        if name is None and isinstance(v.get("function"), Mapping):
            name = v["function"].get("name")
        if isinstance(name, str) and name:
            return {"name": name}
    raise _fail("tool_choice", "must be 'auto', 'none', 'required' or {'name': <tool>}")


def _check_tool_choice(req: ChatRequest) -> None:
    """Both APIs refuse a ``tool_choice`` without tools or naming an unknown tool. Without tools,
    ``auto`` and ``none`` ask for nothing and are dropped (a client may send them with ``tools: []``)."""
    choice, tools = req.tool_choice, req.tools
    if choice is None:
        return
    if not tools:
        if choice in ("auto", "none"):
            req.tool_choice = None
            return
        raise _fail("tool_choice", "needs a non-empty 'tools' to choose from; leave it out when no tools are given")
    if isinstance(choice, dict) and all(t["name"] != choice["name"] for t in tools):
        raise _fail("tool_choice", f"names the tool {choice['name']!r}, which is not in 'tools'")


def _stop(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise _fail("stop", "must be a non-empty string or a list of them")
    if len(v) > MAX_STOP:
        raise _fail("stop", f"at most {MAX_STOP} stop sequences")
    return list(v)


def _max_tokens(body: Mapping[str, Any], cap: int, *names: str) -> int | None:
    found = [(n, _integer(body, n, 1, cap)) for n in names if body.get(n) is not None]
    if len({v for _, v in found}) > 1:
        raise _fail(found[1][0], f"conflicts with {found[0][0]}; send one of them")
    return found[0][1] if found else None


#: the Responses API fields the proxy forwards; everything else is dropped
RESPONSES_FIELDS = (
    "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning", "text", "store", "truncation",
)


def _responses_body(body: Mapping[str, Any], max_messages: int, cap: int) -> dict[str, Any]:
    inp = body.get("input")
    if isinstance(inp, str):
        if not inp.strip():
            raise _fail("input", "must not be empty")
    elif isinstance(inp, list) and inp:
        if len(inp) > max_messages:
            raise _fail("input", f"has {len(inp)} items; at most {max_messages} are allowed")
        for i, item in enumerate(inp):
            if not isinstance(item, Mapping):
                raise _fail(f"input[{i}]", "must be an object")
            role = item.get("role")
            if role is not None and role not in ("system", "developer", "user", "assistant"):
                raise _fail(f"input[{i}].role", f"unknown role {role!r}")
            if role is None and not isinstance(item.get("type"), str):
                raise _fail(f"input[{i}]", "needs a 'role' or a 'type'")
            c = item.get("content")
            if c is not None and not isinstance(c, (str, list)):
                raise _fail(f"input[{i}].content", "must be a string or a list of parts")
    else:
        raise _fail("input", "must be a non-empty string or list")
    out: dict[str, Any] = {"input": inp}
    if body.get("instructions") is not None:
        out["instructions"] = _str(body["instructions"], "instructions")
    mt = _max_tokens(body, cap, "max_output_tokens", "max_tokens", "max_new_tokens")
    if mt is not None:
        out["max_output_tokens"] = mt
    for name, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        val = _number(body, name, lo, hi)
        if val is not None:
            out[name] = val
    if body.get("tools") is not None:
        tools = body["tools"]
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS or not all(isinstance(t, Mapping) and isinstance(t.get("type"), str) for t in tools):
            raise _fail("tools", f"must be a list of at most {MAX_TOOLS} tool objects with a 'type'")
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        tc = body["tool_choice"]
        if not (tc in ("auto", "none", "required") or isinstance(tc, Mapping)):
            raise _fail("tool_choice", "must be 'auto', 'none', 'required' or an object")
        out["tool_choice"] = tc
    for name, typ in (("parallel_tool_calls", bool), ("store", bool), ("reasoning", Mapping), ("text", Mapping)):
        if body.get(name) is not None:
            if not isinstance(body[name], typ):
                raise _fail(name, f"has the wrong type ({type(body[name]).__name__})")
            out[name] = body[name]
    if body.get("truncation") is not None:
        if body["truncation"] not in ("auto", "disabled"):
            raise _fail("truncation", "must be 'auto' or 'disabled'")
        out["truncation"] = body["truncation"]
    return out


def parse_chat_request(
    body: Any, *, max_messages: int, max_tokens_cap: int, allow_responses: bool
) -> ChatRequest:
    """Validate a decoded JSON body; raise :class:`InvalidRequest` naming the first bad field."""
    if not isinstance(body, Mapping):
        raise _fail("body", "must be a JSON object")
    model = _str(body.get("model"), "model", allow_empty=False, max_len=MAX_MODEL_LEN) if "model" in body else None
    if model is None:
        raise _fail("model", "is required")
    if not valid_model_name(model):
        raise _fail("model", "may not contain spaces, line breaks or other invisible characters")
    stream = body.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise _fail("stream", "must be a boolean")
    if "input" in body and "messages" not in body:
        if not allow_responses:
            raise _fail("input", "the Responses form (input) is only for OpenAI providers; send 'messages'")
        rb = _responses_body(body, max_messages, max_tokens_cap)
        return ChatRequest(model=model, stream=stream, responses_body=rb, max_tokens=rb.get("max_output_tokens"))
    req = ChatRequest(
        model=model,
        messages=_messages(body.get("messages"), max_messages),
        max_tokens=_max_tokens(body, max_tokens_cap, "max_tokens", "max_new_tokens"),
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        top_k=_integer(body, "top_k", 1, 1000),
        stop=_stop(body.get("stop", body.get("stop_sequences"))),
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        tools=parse_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        stream=stream,
    )
    _check_tool_choice(req)
    return req
