"""OpenAI Chat Completions (and OpenAI-compatible servers): ``POST {base}/chat/completions``.

Every streaming request carries ``stream_options.include_usage`` so the billed counts arrive in the
stream's last chunk. Tool results become ``role: "tool"`` messages; tool calls stream as argument
fragments per index and are handed on once complete.
"""
from __future__ import annotations

from typing import Any

from .. import _json
from ..contract.request import ChatRequest
from ..config import ProviderConfig, Settings
from .base import Adapter, ToolCall, Translator, output_cap, parse_arguments, stream_error


def _messages(req: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in req.messages:
        role, content = m["role"], m["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        texts = [b["text"] for b in content if b["type"] == "text"]
        if role == "assistant":
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
        # tool results come first, as their own messages, then any text of the same turn
        for b in content:
            if b["type"] == "tool_result":
                out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": b["result"]})
        if texts:
            if role == "system":
                out.append({"role": "system", "content": "\n".join(texts)})
            else:
                out.append({"role": role, "content": [{"type": "text", "text": t} for t in texts]})
    return out


class ChatCompletionsAdapter(Adapter):
    path = "/chat/completions"

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": req.model,
            "messages": _messages(req),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = req.max_tokens if req.max_tokens is not None else output_cap(provider, settings)
        if max_tokens is not None:
            body[provider.max_tokens_field] = max_tokens
        for name in ("temperature", "top_p", "seed"):
            val = getattr(req, name)
            if val is not None:
                body[name] = val
        if req.stop:
            body["stop"] = req.stop
        if req.tools:
            body["tools"] = [
                {"type": "function", "function": {k: v for k, v in t.items() if v is not None}} for t in req.tools
            ]
        if req.tool_choice is not None:
            tc = req.tool_choice
            body["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}} if isinstance(tc, dict) else tc
        return body

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        return {"authorization": f"Bearer {provider.api_key}"}

    def translator(self) -> ChatTranslator:
        return ChatTranslator()


class ChatTranslator(Translator):
    __slots__ = ("_tools",)

    def __init__(self) -> None:
        super().__init__()
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
            out: list[Any] = [text] if text else []
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
        u.reported = True

    def _flush_tools(self) -> list[Any]:
        if not self._tools:
            return []
        calls = [ToolCall(s[0], s[1], parse_arguments("".join(s[2]))) for _, s in sorted(self._tools.items())]
        self._tools.clear()
        return calls
