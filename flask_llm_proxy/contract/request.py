"""The neutral chat request of CONTRACT.md: checked field by field, then held in one shape.

Every error names the field (``messages[2].content[0].text``) so a client developer can fix the
request without reading proxy code. No field is dropped silently: a field the proxy does not know,
at the top level or inside a message, block or tool, is a 400 naming it (:data:`FIELDS` lists the
top-level ones); what each provider does with each known field is decided in ``providers/``
(translated, passed through, or a 400 naming it there) and tabled in ``docs/multimodal.rst``.
Content blocks are :mod:`.blocks`, reasoning and structured output :mod:`.options`, the
Responses form :mod:`.responses_form`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import options
from .blocks import IMAGE_CHARS_ESTIMATE, Policy, content_chars, parse_block
from .responses_form import parse_responses_body
from .values import boolean, cache_control, fail, integer, key_path, number, only_keys, shown, string

ROLES = ("system", "user", "assistant")
MAX_MODEL_LEN = 256
MAX_STOP = 16
MAX_TOOLS = 128

#: every top-level field of the messages form; any other is a 400 naming it
FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stop_sequences",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "thinking",
    "reasoning_effort",
    "response_format",
    "stream",
    "include_reasoning",
    "enable_thinking",
    "deterministic",
)


def valid_model_name(model: str) -> bool:
    """Model ids are visible characters only: a pattern such as ``claude-*`` in the allow-list
    would otherwise also let ``claude-x\n...`` through to the upstream."""
    return model.isprintable() and " " not in model  # isprintable() is False for every other space


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
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    thinking: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = True
    #: relay the model's reasoning as the contract's reasoning events (docs/multimodal.rst)
    include_reasoning: bool = False
    #: the OpenAI Responses form (``input`` instead of ``messages``), already checked
    responses_body: dict[str, Any] | None = None
    #: ``(path, neutral block)`` of the images and files among the Responses form's input parts
    responses_attachments: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def text_for_log(self) -> str:
        """The prompt's text (LLM_PROXY_LOG_CONTENT): never the base64 of an attachment."""
        if self.responses_body is not None:
            inp = self.responses_body.get("input")
            if isinstance(inp, str):
                return inp
            parts = []
            for item in inp or ():
                c = item.get("content")
                if isinstance(c, str):
                    parts.append(c)
                elif isinstance(c, list):
                    parts.extend(p["text"] for p in c if isinstance(p, Mapping) and isinstance(p.get("text"), str))
            return "\n".join(parts)
        parts = []
        for m in self.messages:
            c = m["content"]
            if isinstance(c, str):
                parts.append(c)
            else:
                parts.extend(b.get("text", "") for b in c if b["type"] == "text")
        return "\n".join(parts)

    def input_size_hint(self) -> int:
        """Characters of prompt: the base of the documented token estimate for cut streams. An
        attachment counts as an estimate of its tokens, not as its base64 text."""
        if self.responses_body is not None:
            n = len(str(self.responses_body.get("input", ""))) + len(str(self.responses_body.get("instructions", "")))
            for _, b in self.responses_attachments:
                src = b["source"]
                n += IMAGE_CHARS_ESTIMATE - (len(src["data"]) if src["type"] == "base64" else len(src["url"]))
            return max(n, 1)
        return sum(content_chars(m["content"]) for m in self.messages)


def _messages(v: Any, max_messages: int, policy: Policy) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise fail("messages", "must be a non-empty list")
    if len(v) > max_messages:
        raise fail("messages", f"has {len(v)} messages; at most {max_messages} are allowed")
    out = []
    for i, m in enumerate(v):
        path = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise fail(path, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise fail(f"{path}.role", f"must be one of {list(ROLES)}, got {shown(role)}")
        only_keys(m, path, ("role", "content"))
        content = m.get("content")
        if isinstance(content, str):
            if not content.strip():
                raise fail(f"{path}.content", "must not be empty")
        elif isinstance(content, list) and content:
            content = [parse_block(b, f"{path}.content[{j}]", role, policy) for j, b in enumerate(content)]
            if role == "system" and any(b["type"] != "text" for b in content):
                raise fail(f"{path}.content", "system messages take text only")
        else:
            raise fail(f"{path}.content", "must be a non-empty string or a non-empty list of blocks")
        out.append({"role": role, "content": content})
    for m in out:  # a loop, not all(<genexpr>): stopping a generator early raises inside it
        if m["role"] != "system":
            break
    else:
        raise fail("messages", "needs at least one user message")
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
                    raise fail(path, f"{tid!r} answers no tool_use of the previous assistant message")
                if tid in answered:
                    raise fail(path, f"the tool_use {tid!r} is already answered by an earlier tool_result of this turn")
                answered.add(tid)
        for tid, path in open_calls.items():
            if tid not in answered:
                raise fail(path, f"the tool_use {tid!r} is not answered by a tool_result in the next message (messages[{first}])")
        open_calls = {b["id"]: f"messages[{i}].content[{j}].id" for i, j, b in blocks if b["type"] == "tool_use"}
    if open_calls:  # the conversation ends on an assistant message with tool calls
        tid, path = next(iter(open_calls.items()))
        raise fail(path, f"the tool_use {tid!r} is not answered: the next message must be a user message with its tool_result")


def parse_tools(v: Any) -> list[dict[str, Any]] | None:
    """Tools in the neutral shape (``name``, ``description``, ``parameters``, ``strict``,
    ``cache_control``), from it or from Anthropic's (``input_schema``) or OpenAI's wrapper."""
    if v is None:
        return None
    if not isinstance(v, list):
        raise fail("tools", "must be a list")
    if len(v) > MAX_TOOLS:
        raise fail("tools", f"at most {MAX_TOOLS} tools")
    out = []
    seen: dict[str, int] = {}  # tool name -> its index
    for i, t in enumerate(v):
        path = f"tools[{i}]"
        if not isinstance(t, Mapping):
            raise fail(path, "must be an object with 'name'")
        extra: dict[str, Any] = {}
        if t.get("type") == "function" and isinstance(t.get("function"), Mapping):
            only_keys(t, path, ("type", "function", "cache_control"))
            if "cache_control" in t:
                extra["cache_control"] = cache_control(t["cache_control"], f"{path}.cache_control")
            t, path = t["function"], f"{path}.function"  # accept OpenAI's wrapper too
            only_keys(t, path, ("name", "description", "parameters", "strict"))
        else:
            only_keys(t, path, ("name", "description", "parameters", "input_schema", "strict", "cache_control"))
            if "cache_control" in t:
                extra["cache_control"] = cache_control(t["cache_control"], f"{path}.cache_control")
        params = t.get("parameters", t.get("input_schema", {"type": "object", "properties": {}}))
        if not isinstance(params, Mapping):
            raise fail(f"{path}.parameters", "must be a JSON schema object")
        desc = t.get("description")
        if desc is not None:
            string(desc, f"{path}.description")
        if t.get("strict") is not None:
            extra["strict"] = boolean(t["strict"], f"{path}.strict")
        name = string(t.get("name"), f"{path}.name", allow_empty=False, max_len=128)
        if name in seen:
            raise fail(f"{path}.name", f"{name!r} is already the name of tools[{seen[name]}]; tool names must be unique")
        seen[name] = i
        out.append({"name": name, "description": desc, "parameters": dict(params), **extra})
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
    raise fail("tool_choice", "must be 'auto', 'none', 'required' or {'name': <tool>}")


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
        raise fail("tool_choice", "needs a non-empty 'tools' to choose from; leave it out when no tools are given")
    if isinstance(choice, dict) and all(t["name"] != choice["name"] for t in tools):
        raise fail("tool_choice", f"names the tool {choice['name']!r}, which is not in 'tools'")


def _stop(v: Any, name: str) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise fail(name, "must be a non-empty string or a list of them")
    if len(v) > MAX_STOP:
        raise fail(name, f"at most {MAX_STOP} stop sequences")
    return list(v)


def _max_tokens(body: Mapping[str, Any], cap: int, *names: str) -> int | None:
    found = [(n, integer(body, n, 1, cap)) for n in names if body.get(n) is not None]
    if len({v for _, v in found}) > 1:
        raise fail(found[1][0], f"conflicts with {found[0][0]}; send one of them")
    return found[0][1] if found else None


def parse_chat_request(
    body: Any, *, max_messages: int, max_tokens_cap: int, allow_responses: bool, policy: Policy = Policy()
) -> ChatRequest:
    """Validate a decoded JSON body; raise :class:`InvalidRequest` naming the first bad field.
    ``policy``: the attachments the host allows on this provider."""
    if not isinstance(body, Mapping):
        raise fail("body", "must be a JSON object")
    model = string(body.get("model"), "model", allow_empty=False, max_len=MAX_MODEL_LEN) if "model" in body else None
    if model is None:
        raise fail("model", "is required")
    if not valid_model_name(model):
        raise fail("model", "may not contain spaces, line breaks or other invisible characters")
    stream = body.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise fail("stream", "must be a boolean")
    include_reasoning = options.include_reasoning(body)
    if "input" in body and "messages" not in body:
        if not allow_responses:
            raise fail("input", "the Responses form (input) is only for OpenAI providers; send 'messages'")
        rb, found = parse_responses_body(body, max_messages, max_tokens_cap, policy, _max_tokens)
        return ChatRequest(
            model=model,
            stream=stream,
            responses_body=rb,
            max_tokens=rb.get("max_output_tokens"),
            include_reasoning=include_reasoning,
            responses_attachments=found,
        )
    for key in body:
        if key not in FIELDS:
            hint = (
                "; send either 'messages' or 'input' (the Responses form), not both"
                if key == "input"
                else "; send 'messages' (the Responses form's fields go with 'input')"
                if key in ("instructions", "max_output_tokens")
                else ""
            )
            raise fail(key_path("", key), f"is not a field the proxy knows{hint}; known: {', '.join(sorted(FIELDS))}")
    options.agentary_flags(body)
    stop = _stop(body.get("stop"), "stop")
    sequences = _stop(body.get("stop_sequences"), "stop_sequences")
    if stop and sequences and stop != sequences:
        raise fail("stop_sequences", "conflicts with stop; send one of them")
    req = ChatRequest(
        model=model,
        messages=_messages(body.get("messages"), max_messages, policy),
        max_tokens=_max_tokens(body, max_tokens_cap, "max_tokens", "max_new_tokens"),
        temperature=number(body, "temperature", 0.0, 2.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        top_k=integer(body, "top_k", 1, 1000),
        stop=stop or sequences,
        seed=integer(body, "seed", -(2**63), 2**63 - 1),
        tools=parse_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=None
        if body.get("parallel_tool_calls") is None
        else boolean(body["parallel_tool_calls"], "parallel_tool_calls"),
        presence_penalty=number(body, "presence_penalty", -2.0, 2.0),
        frequency_penalty=number(body, "frequency_penalty", -2.0, 2.0),
        repetition_penalty=number(body, "repetition_penalty", 0.0, 10.0),
        thinking=options.thinking(body.get("thinking")),
        reasoning_effort=options.reasoning_effort(body.get("reasoning_effort")),
        response_format=options.response_format(body.get("response_format")),
        stream=stream,
        include_reasoning=include_reasoning,
    )
    _check_tool_choice(req)
    return req
