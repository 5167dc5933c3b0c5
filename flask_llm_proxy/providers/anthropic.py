"""Anthropic Messages API: ``POST {base}/v1/messages``
(https://docs.claude.com/en/api/messages).

Request rules the real API enforces are checked here, so they become a clear 400 from the proxy
instead of an upstream 400: system text goes to ``system``, ``max_tokens`` is always sent,
``temperature`` is 0..1, tool results answer a tool use of the previous assistant turn, thinking
leaves sampling alone, attachments within the API's limits. Fields the API does not take (``seed``,
OpenAI's penalties and ``reasoning_effort``) are a 400 naming them, never dropped.
"""

from __future__ import annotations

from typing import Any

from .. import _json
from ..config import ProviderConfig, Settings
from ..contract.blocks import AttachmentLimits, attachments_of, check_limits
from ..contract.request import ChatRequest
from ..contract.values import fail
from .base import Adapter, Reasoning, ToolCall, Translator, output_cap, parse_arguments, stream_error

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}

#: https://docs.claude.com/en/docs/build-with-claude/vision (5 MB per image, checked on the
#: base64 text; at most 100 images per request) and .../pdf-support (32 MB per request; PDFs as
#: base64 or URL, plain text as a text source)
LIMITS = AttachmentLimits(
    api="Anthropic",
    image_data_chars=5 * 1024 * 1024,
    max_images=100,
    document_sources=frozenset({"base64", "url", "text"}),
    document_data_chars=32 * 1024 * 1024,
)
#: what the neutral request has and Anthropic's API has not, and what to send instead
_NOT_TAKEN = {
    "seed": "Anthropic's API takes no seed",
    "presence_penalty": "Anthropic's API has no presence_penalty",
    "frequency_penalty": "Anthropic's API has no frequency_penalty",
    "repetition_penalty": "Anthropic's API has no repetition_penalty",
    "reasoning_effort": 'is OpenAI\'s; for Anthropic models send thinking: {"type": "enabled", "budget_tokens": N}',
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b["text"] for b in content if b["type"] == "text")


def _cached(block: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if "cache_control" in b:
        block["cache_control"] = b["cache_control"]
    return block


def _block(b: dict[str, Any], path: str) -> dict[str, Any]:
    t = b["type"]
    if t == "text":
        return _cached({"type": "text", "text": b["text"]}, b)
    if t == "image":
        if b.get("detail", "auto") != "auto":  # Anthropic sizes images itself
            raise fail(f"{path}.detail", "Anthropic has no image detail setting; leave it out (or 'auto')")
        return _cached({"type": "image", "source": b["source"]}, b)
    if t == "document":
        block = {"type": "document", "source": b["source"]}
        if b.get("title") or b.get("filename"):
            block["title"] = b.get("title") or b["filename"]
        for name in ("context", "citations"):
            if name in b:
                block[name] = b[name]
        return _cached(block, b)
    if t == "tool_use":
        return _cached({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["arguments"]}, b)
    if t == "tool_result":
        block = {"type": "tool_result", "tool_use_id": b["tool_use_id"], "content": b["result"]}
        if b["is_error"]:
            block["is_error"] = True
        return _cached(block, b)
    return dict(b)  # thinking, redacted_thinking: sent back as they came


def _blocks(content: Any, path: str) -> Any:
    if isinstance(content, str):
        return content
    return [_block(b, f"{path}.content[{j}]") for j, b in enumerate(content)]


def _as_list(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _system(req: ChatRequest) -> Any:
    """One string, or text blocks when a block carries ``cache_control`` (a cache breakpoint
    at the end of the system prompt is the commonest one)."""
    systems = [m["content"] for m in req.messages if m["role"] == "system"]
    if not any(isinstance(c, list) and any("cache_control" in b for b in c) for c in systems):
        return "\n\n".join(_text_of(c) for c in systems)
    return [_cached({"type": "text", "text": b["text"]}, b) for c in systems for b in _as_list(c)]


#: cache breakpoints per request (https://docs.claude.com/en/docs/build-with-claude/prompt-caching)
MAX_CACHE_BREAKPOINTS = 4


def _check_breakpoints(req: ChatRequest) -> None:
    marked = [f"tools[{i}]" for i, t in enumerate(req.tools or ()) if "cache_control" in t]
    for i, m in enumerate(req.messages):
        if not isinstance(m["content"], str):
            marked += [f"messages[{i}].content[{j}]" for j, b in enumerate(m["content"]) if "cache_control" in b]
    if len(marked) > MAX_CACHE_BREAKPOINTS:
        raise fail(
            f"{marked[MAX_CACHE_BREAKPOINTS]}.cache_control",
            f"Anthropic takes at most {MAX_CACHE_BREAKPOINTS} cache_control breakpoints per request; this is the "
            f"{MAX_CACHE_BREAKPOINTS + 1}th",
        )


def _check_thinking(req: ChatRequest, max_tokens: int) -> None:
    """Extended thinking leaves sampling to the model and only lets it choose tools freely
    (https://docs.claude.com/en/docs/build-with-claude/extended-thinking)."""
    if req.thinking is None or req.thinking["type"] == "disabled":
        return
    budget = req.thinking.get("budget_tokens")
    if budget is not None and budget >= max_tokens:
        raise fail("thinking.budget_tokens", f"must be less than max_tokens ({max_tokens}): the budget is part of the answer's tokens")
    if req.temperature is not None and req.temperature != 1.0:
        raise fail("temperature", "cannot be changed while Anthropic's extended thinking is on; leave it out")
    if req.top_k is not None:
        raise fail("top_k", "cannot be set while Anthropic's extended thinking is on")
    if req.top_p is not None and req.top_p < 0.95:
        raise fail("top_p", "must be between 0.95 and 1 while Anthropic's extended thinking is on")
    if req.tool_choice not in (None, "auto", "none"):
        raise fail("tool_choice", "only 'auto' or 'none' while Anthropic's extended thinking is on")


def _output_config(rf: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as Anthropic's structured outputs, ``output_config.format``
    (https://docs.claude.com/en/docs/build-with-claude/structured-outputs): a JSON schema; the
    output always follows it, so ``strict`` has nothing to change and ``name`` nothing to name."""
    if rf["type"] == "text":
        return None  # plain text is Anthropic's default
    if rf["type"] == "json_object" or "schema" not in rf["json_schema"]:
        raise fail(
            "response_format",
            'Anthropic\'s structured outputs need a JSON schema: send {"type": "json_schema", '
            '"json_schema": {"name": ..., "schema": {...}}}; JSON mode without a schema has no equivalent',
        )
    return {"format": {"type": "json_schema", "schema": rf["json_schema"]["schema"]}}


class AnthropicAdapter(Adapter):
    path = "/v1/messages"

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        if req.temperature is not None and req.temperature > 1.0:
            raise fail("temperature", "must be between 0 and 1 for Anthropic models")
        for name, why in _NOT_TAKEN.items():
            if getattr(req, name) is not None:
                raise fail(name, why)
        check_limits(attachments_of(req.messages), LIMITS)
        _check_breakpoints(req)
        messages: list[dict[str, Any]] = []  # tool_use / tool_result pairing: chat._check_tool_pairs
        for i, m in enumerate(req.messages):
            if m["role"] == "system":
                continue
            content = _blocks(m["content"], f"messages[{i}]")
            if messages and messages[-1]["role"] == m["role"]:  # one turn, one message (parallel tool results)
                messages[-1]["content"] = _as_list(messages[-1]["content"]) + _as_list(content)
            else:
                messages.append({"role": m["role"], "content": content})
        if not messages or messages[0]["role"] != "user":
            raise fail("messages", "the first non-system message must be from the user")
        max_tokens = req.max_tokens or min(settings.default_max_tokens, output_cap(provider, settings) or settings.default_max_tokens)
        _check_thinking(req, max_tokens)
        body: dict[str, Any] = {"model": req.model, "messages": messages, "max_tokens": max_tokens, "stream": True}
        system = _system(req)
        if system:
            body["system"] = system
        for name in ("temperature", "top_p", "top_k", "thinking"):
            val = getattr(req, name)
            if val is not None:
                body[name] = val
        if req.stop:
            blank = next((i for i, seq in enumerate(req.stop) if not seq.strip()), None)
            if blank is not None:  # OpenAI takes "\n\n"; Anthropic answers 400: say so before calling it
                raise fail(f"stop[{blank}]", "Anthropic does not accept stop sequences made only of whitespace")
            body["stop_sequences"] = req.stop
        if req.tools:
            body["tools"] = [
                {
                    k: t[n]
                    for k, n in (
                        ("name", "name"),
                        ("description", "description"),
                        ("input_schema", "parameters"),
                        ("strict", "strict"),
                        ("cache_control", "cache_control"),
                    )
                    if t.get(n) is not None
                }
                for t in req.tools
            ]
        if req.tool_choice is not None:
            tc = req.tool_choice
            body["tool_choice"] = (
                {"type": "tool", "name": tc["name"]} if isinstance(tc, dict) else {"type": {"required": "any"}.get(tc, tc)}
            )
        if req.parallel_tool_calls is False and req.tools and body.get("tool_choice", {}).get("type") != "none":
            # OpenAI's parallel_tool_calls: false is Anthropic's disable_parallel_tool_use
            body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
        if req.response_format is not None:
            oc = _output_config(req.response_format)
            if oc is not None:
                body["output_config"] = oc
        return body

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        return {"x-api-key": provider.api_key, "anthropic-version": provider.anthropic_version}

    def translator(self, reasoning: bool = False) -> AnthropicTranslator:
        return AnthropicTranslator(reasoning)


class AnthropicTranslator(Translator):
    __slots__ = ("_tools",)

    def __init__(self, reasoning: bool = False) -> None:
        super().__init__(reasoning)
        self._tools: dict[int, list[Any]] = {}  # block index -> [id, name, [partial json]]

    def read_usage(self, usage: dict[str, Any]) -> None:
        """Anthropic counts cached prompt tokens apart; the ledger's input is the whole prompt."""
        u = self.usage
        u.cache_read = usage.get("cache_read_input_tokens") or u.cache_read
        u.cache_write = usage.get("cache_creation_input_tokens") or u.cache_write
        if "input_tokens" in usage and (usage["input_tokens"] or not u.input_tokens):
            u.input_tokens = (usage["input_tokens"] or 0) + u.cache_read + u.cache_write
        if "output_tokens" in usage:
            u.output_tokens = usage["output_tokens"] or 0  # thinking included: it is billed as output
        details = usage.get("output_tokens_details")
        if details and details.get("thinking_tokens"):
            u.reasoning_tokens = details["thinking_tokens"]

    def feed(self, event: str, data: str) -> list[Any]:
        # Most events are text deltas: test for them first, and skip pings without parsing.
        if event == "content_block_delta":
            obj = _json.loads(data)
            delta = obj["delta"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta["text"]
                return [text] if text else []
            if dtype == "input_json_delta":
                tool = self._tools.get(obj.get("index", 0))
                if tool is not None:
                    tool[2].append(delta.get("partial_json", ""))
            elif dtype == "thinking_delta":
                return self.reasoning_delta(delta.get("thinking"))
            elif dtype == "signature_delta" and self.reasoning and delta.get("signature"):
                return [Reasoning("", signature=delta["signature"])]
            return []  # citations_delta, future delta types
        if event == "ping":
            return []
        if event == "message_start":
            self.read_usage(_json.loads(data)["message"].get("usage") or {})
            return []
        if event == "content_block_start":
            obj = _json.loads(data)
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._tools[obj.get("index", 0)] = [block.get("id", ""), block.get("name", ""), []]
            elif block.get("type") == "text" and block.get("text"):
                return [block["text"]]
            elif block.get("type") == "thinking":
                return self.reasoning_delta(block.get("thinking"))
            elif block.get("type") == "redacted_thinking" and self.reasoning and block.get("data"):
                return [Reasoning("", redacted=block["data"])]
            return []
        if event == "content_block_stop":
            tool = self._tools.pop(_json.loads(data).get("index", 0), None)
            if tool is not None:
                return [ToolCall(tool[0], tool[1], parse_arguments("".join(tool[2])))]
            return []
        if event == "message_delta":
            obj = _json.loads(data)
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish_reason = FINISH.get(reason, reason)
            usage = obj.get("usage") or {}
            self.read_usage(usage)  # newer API versions repeat the cumulative input counts here
            if "output_tokens" in usage:
                self.usage.reported = True  # the final output count
            return []
        if event == "message_stop":
            self.done = True
            return []
        if event == "error":
            err = (_json.loads(data).get("error") or {}) if data else {}
            raise stream_error(502, err.get("type", "api_error"), err.get("message", "stream error"))
        return []  # unknown event types are ignored, as Anthropic asks
