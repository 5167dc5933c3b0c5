"""OpenAI Chat Completions (and OpenAI-compatible servers): ``POST {base}/chat/completions``
(https://platform.openai.com/docs/api-reference/chat/create).

Every streaming request carries ``stream_options.include_usage`` so the billed counts arrive in the
stream's last chunk. Tool results become ``role: "tool"`` messages; tool calls stream as argument
fragments per index and are handed on once complete. Images become ``image_url`` parts (a base64
image a data URL), PDFs ``file`` parts. What the API does not take is a 400 naming it: Anthropic's
``thinking`` and ``cache_control``, and ``top_k`` / ``repetition_penalty`` on OpenAI's own API
(OpenAI-compatible servers such as vLLM take them, so they pass through to those).
"""

from __future__ import annotations

from typing import Any

from .. import _json
from ..config import ProviderConfig, Settings
from ..contract.blocks import AttachmentLimits, attachments_of, check_limits
from ..contract.request import ChatRequest
from ..contract.values import fail
from .base import Adapter, ToolCall, Translator, parse_arguments, sent_cap, stream_error

#: https://platform.openai.com/docs/guides/images-vision (50 MB of images per request, 500
#: images) and https://platform.openai.com/docs/guides/pdf-files (PDFs inline as file_data, 32 MB)
LIMITS = AttachmentLimits(
    api="OpenAI",
    image_data_chars=50 * 1000 * 1000,
    max_images=500,
    document_sources=frozenset({"base64"}),
    document_data_chars=32 * 1000 * 1000,
)
CACHE_CONTROL = (
    "OpenAI caches prompt prefixes by itself (https://platform.openai.com/docs/guides/prompt-caching); cache_control is Anthropic's"
)


def _part(b: dict[str, Any], path: str) -> dict[str, Any]:
    """A text, image or document block as a content part of a user message."""
    if "cache_control" in b:
        raise fail(f"{path}.cache_control", CACHE_CONTROL)
    t, src = b["type"], b.get("source") or {}
    if t == "text":
        return {"type": "text", "text": b["text"]}
    if t == "image":
        url = src["url"] if src["type"] == "url" else f"data:{src['media_type']};base64,{src['data']}"
        spec = {"url": url}
        if "detail" in b:
            spec["detail"] = b["detail"]
        return {"type": "image_url", "image_url": spec}
    for name in ("context", "citations"):
        if name in b:
            raise fail(f"{path}.{name}", "is Anthropic's; OpenAI takes a PDF with its filename only")
    return {
        "type": "file",
        "file": {
            "filename": b.get("filename") or b.get("title") or "document.pdf",
            "file_data": f"data:{src['media_type']};base64,{src['data']}",
        },
    }


def _messages(req: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        role, content = m["role"], m["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        for j, b in enumerate(content):
            if b["type"] in ("thinking", "redacted_thinking"):
                raise fail(f"messages[{i}].content[{j}]", f"{b['type']} blocks are Anthropic's; leave them out for OpenAI models")
            if "cache_control" in b and b["type"] in ("tool_use", "tool_result"):
                raise fail(f"messages[{i}].content[{j}].cache_control", CACHE_CONTROL)
        if role == "assistant":
            texts = [b["text"] for b in content if b["type"] == "text"]
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
            calls = [
                {"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": _json.dumps_str(b["arguments"])}}
                for b in content
                if b["type"] == "tool_use"
            ]
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            continue
        # tool results come first, as their own messages, then the text and attachments of the same turn
        for b in content:
            if b["type"] == "tool_result":
                out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": b["result"]})
        parts = [_part(b, f"messages[{i}].content[{j}]") for j, b in enumerate(content) if b["type"] != "tool_result"]
        if parts:
            if role == "system":
                out.append({"role": "system", "content": "\n".join(p["text"] for p in parts)})
            else:
                out.append({"role": role, "content": parts})
    return out


class ChatCompletionsAdapter(Adapter):
    path = "/chat/completions"

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        if req.thinking is not None:
            raise fail("thinking", "is Anthropic's; for OpenAI models send reasoning_effort ('low', 'medium', 'high')")
        for name in ("top_k", "repetition_penalty"):
            if getattr(req, name) is not None and provider.official:
                raise fail(name, f"OpenAI's API has no {name} (OpenAI-compatible servers such as vLLM take it)")
        check_limits(attachments_of(req.messages), LIMITS)
        body: dict[str, Any] = {
            "model": req.model,
            "messages": _messages(req),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = req.max_tokens if req.max_tokens is not None else sent_cap(provider, settings)
        if max_tokens is not None:
            body[provider.max_tokens_field] = max_tokens
        for name in (
            "temperature",
            "top_p",
            "seed",
            "top_k",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "reasoning_effort",
            "response_format",
        ):
            val = getattr(req, name)
            if val is not None:
                body[name] = val
        if req.stop:
            body["stop"] = req.stop
        if req.tools:
            for i, t in enumerate(req.tools):
                if "cache_control" in t:
                    raise fail(f"tools[{i}].cache_control", CACHE_CONTROL)
            body["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if v is not None}} for t in req.tools]
            if req.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = req.parallel_tool_calls
        if req.tool_choice is not None:
            tc = req.tool_choice
            body["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}} if isinstance(tc, dict) else tc
        return body

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        return {"authorization": f"Bearer {provider.api_key}"}

    def translator(self, reasoning: bool = False) -> ChatTranslator:
        return ChatTranslator(reasoning)


class ChatTranslator(Translator):
    __slots__ = ("_tools",)

    def __init__(self, reasoning: bool = False) -> None:
        super().__init__(reasoning)
        self._tools: dict[int, list[Any]] = {}  # index -> [id, name, [argument fragments]]

    def feed(self, event: str, data: str) -> list[Any]:
        if data == "[DONE]":
            self.done = True
            return self._flush_tools()
        obj = _json.loads(data)
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out: list[Any] = [text]
            else:
                # OpenAI's own API streams no reasoning text; DeepSeek sends reasoning_content
                # (https://api-docs.deepseek.com/guides/reasoning_model), vLLM and OpenRouter reasoning
                out = self.reasoning_delta(delta.get("reasoning_content") or delta.get("reasoning"))
            calls = delta.get("tool_calls")
            if calls:
                for c in calls:
                    slot = self._tools.setdefault(c.get("index", 0), ["", "", []])
                    if c.get("id"):
                        slot[0] = c["id"]
                    fn = c.get("function") or {}
                    if fn.get("name"):
                        slot[1] = fn["name"]
                    if fn.get("arguments"):
                        slot[2].append(fn["arguments"])
            reason = choice.get("finish_reason")
            if reason:
                # Compatible servers often omit "[DONE]"; a finish reason already ends the answer.
                self.finish_reason = reason
                self.done = True
                out.extend(self._flush_tools())
            if "usage" in obj and obj["usage"]:
                self.read_usage(obj["usage"])
            return out
        if obj.get("usage"):
            self.read_usage(obj["usage"])
            return []
        if "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
            raise stream_error(502, err.get("type") or err.get("code") or "server_error", err.get("message", "stream error"))
        return []

    def read_usage(self, usage: dict[str, Any]) -> None:
        u = self.usage
        u.input_tokens = usage.get("prompt_tokens") or 0
        u.output_tokens = usage.get("completion_tokens") or 0
        u.cache_read = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        u.reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0  # of completion_tokens
        u.reported = True

    def _flush_tools(self) -> list[Any]:
        if not self._tools:
            return []
        calls = [ToolCall(s[0], s[1], parse_arguments("".join(s[2]))) for _, s in sorted(self._tools.items())]
        self._tools.clear()
        return calls
