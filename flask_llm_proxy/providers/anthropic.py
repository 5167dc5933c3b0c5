"""Anthropic Messages API: ``POST {base}/v1/messages``.

Request rules the real API enforces are checked here, so they become a clear 400 from the proxy
instead of an upstream 400: system text goes to ``system``, ``max_tokens`` is always sent,
``temperature`` is 0..1, tool results answer a tool use of the previous assistant turn.
"""
from __future__ import annotations

from typing import Any

from .. import _json
from ..contract.request import ChatRequest
from ..config import ProviderConfig, Settings
from ..errors import InvalidRequest
from .base import Adapter, ToolCall, Translator, output_cap, parse_arguments, stream_error

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b["text"] for b in content if b["type"] == "text")


def _blocks(content: Any) -> Any:
    if isinstance(content, str):
        return content
    out = []
    for b in content:
        t = b["type"]
        if t == "text":
            out.append({"type": "text", "text": b["text"]})
        elif t == "tool_use":
            out.append({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["arguments"]})
        else:
            block = {"type": "tool_result", "tool_use_id": b["tool_use_id"], "content": b["result"]}
            if b["is_error"]:
                block["is_error"] = True
            out.append(block)
    return out


def _as_list(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


class AnthropicAdapter(Adapter):
    path = "/v1/messages"

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        if req.temperature is not None and req.temperature > 1.0:
            raise InvalidRequest("temperature: must be between 0 and 1 for Anthropic models", extra={"param": "temperature"})
        system = [_text_of(m["content"]) for m in req.messages if m["role"] == "system"]
        messages: list[dict[str, Any]] = []  # tool_use / tool_result pairing: chat._check_tool_pairs
        for m in req.messages:
            if m["role"] == "system":
                continue
            if messages and messages[-1]["role"] == m["role"]:  # one turn, one message (parallel tool results)
                messages[-1]["content"] = _as_list(messages[-1]["content"]) + _as_list(_blocks(m["content"]))
            else:
                messages.append({"role": m["role"], "content": _blocks(m["content"])})
        if not messages or messages[0]["role"] != "user":
            raise InvalidRequest("messages: the first non-system message must be from the user", extra={"param": "messages"})
        body: dict[str, Any] = {
            "model": req.model,
            "messages": messages,
            "max_tokens": req.max_tokens or min(settings.default_max_tokens, output_cap(provider, settings) or settings.default_max_tokens),
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.top_k is not None:
            body["top_k"] = req.top_k
        if req.stop:
            blank = next((i for i, seq in enumerate(req.stop) if not seq.strip()), None)
            if blank is not None:  # OpenAI takes "\n\n"; Anthropic answers 400: say so before calling it
                raise InvalidRequest(
                    f"stop[{blank}]: Anthropic does not accept stop sequences made only of whitespace",
                    extra={"param": f"stop[{blank}]"},
                )
            body["stop_sequences"] = req.stop
        if req.tools:
            body["tools"] = [
                {k: v for k, v in (("name", t["name"]), ("description", t["description"]), ("input_schema", t["parameters"])) if v is not None}
                for t in req.tools
            ]
        if req.tool_choice is not None:
            tc = req.tool_choice
            if isinstance(tc, dict):
                body["tool_choice"] = {"type": "tool", "name": tc["name"]}
            else:
                body["tool_choice"] = {"type": {"required": "any"}.get(tc, tc)}
        return body

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        return {"x-api-key": provider.api_key, "anthropic-version": provider.anthropic_version}

    def translator(self) -> AnthropicTranslator:
        return AnthropicTranslator()


class AnthropicTranslator(Translator):
    __slots__ = ("_tools",)

    def __init__(self) -> None:
        super().__init__()
        self._tools: dict[int, list[Any]] = {}  # block index -> [id, name, [partial json]]

    def read_usage(self, usage: dict[str, Any]) -> None:
        """Anthropic counts cached prompt tokens apart; the ledger's input is the whole prompt."""
        u = self.usage
        u.cache_read = usage.get("cache_read_input_tokens") or u.cache_read
        u.cache_write = usage.get("cache_creation_input_tokens") or u.cache_write
        if "input_tokens" in usage and (usage["input_tokens"] or not u.input_tokens):
            u.input_tokens = (usage["input_tokens"] or 0) + u.cache_read + u.cache_write
        if "output_tokens" in usage:
            u.output_tokens = usage["output_tokens"] or 0

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
            return []  # thinking_delta, signature_delta, future delta types
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
