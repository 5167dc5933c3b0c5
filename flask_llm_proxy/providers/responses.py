"""OpenAI Responses API: ``POST {base}/responses``, used when the body carries ``input``
(https://platform.openai.com/docs/api-reference/responses).

The body was checked field by field in ``contract/responses_form.py``; here the attachments among
its input parts meet the API's limits, and it gets the model and ``stream: true``. Text arrives as
``response.output_text.delta``, reasoning as ``response.reasoning_summary_text.delta`` (with
``reasoning: {"summary": "auto"}``) or ``response.reasoning_text.delta``, usage in
``response.completed`` (https://platform.openai.com/docs/api-reference/responses-streaming).
"""

from __future__ import annotations

from typing import Any

from .. import _json
from ..config import ProviderConfig, Settings
from ..contract.blocks import check_limits
from ..contract.request import ChatRequest
from .base import Adapter, ToolCall, Translator, parse_arguments, sent_cap, stream_error
from .openai import LIMITS, ChatCompletionsAdapter


class ResponsesAdapter(Adapter):
    path = "/responses"

    def build(self, req: ChatRequest, provider: ProviderConfig, settings: Settings) -> dict[str, Any]:
        check_limits(req.responses_attachments, LIMITS)
        body = dict(req.responses_body or {})
        cap = sent_cap(provider, settings)
        if cap is not None and "max_output_tokens" not in body:
            body["max_output_tokens"] = cap
        body["model"] = req.model
        body["stream"] = True
        return body

    auth_headers = ChatCompletionsAdapter.auth_headers

    def translator(self, reasoning: bool = False) -> ResponsesTranslator:
        return ResponsesTranslator(reasoning)


class ResponsesTranslator(Translator):
    __slots__ = ("_calls", "_emitted")

    def __init__(self, reasoning: bool = False) -> None:
        super().__init__(reasoning)
        self._calls: dict[Any, list[Any]] = {}  # output_index -> [call_id, name, [fragments]]
        self._emitted = False

    def read_usage(self, usage: dict[str, Any]) -> None:
        u = self.usage
        u.input_tokens = usage.get("input_tokens") or 0
        u.output_tokens = usage.get("output_tokens") or 0
        u.cache_read = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
        u.reasoning_tokens = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0  # of output_tokens
        u.reported = bool(usage)

    def feed(self, event: str, data: str) -> list[Any]:
        if event == "response.output_text.delta":
            text = _json.loads(data).get("delta")
            return [text] if text else []
        if event == "message" or not event.startswith(("response.", "error")):
            return []
        if event in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self.reasoning_delta(_json.loads(data).get("delta"))
        obj = _json.loads(data)
        if event == "response.output_item.added":
            item = obj.get("item") or {}
            if item.get("type") == "function_call":
                self._calls[obj.get("output_index")] = [item.get("call_id") or item.get("id", ""), item.get("name", ""), []]
            return []
        if event == "response.function_call_arguments.delta":
            slot = self._calls.get(obj.get("output_index"))
            if slot is not None:
                slot[2].append(obj.get("delta", ""))
            return []
        if event == "response.output_item.done":
            item = obj.get("item") or {}
            slot = self._calls.pop(obj.get("output_index"), None)
            if item.get("type") == "function_call":
                args = item.get("arguments")
                if args is None and slot is not None:
                    args = "".join(slot[2])
                self._emitted = True
                return [
                    ToolCall(
                        item.get("call_id") or (slot[0] if slot else ""),
                        item.get("name") or (slot[1] if slot else ""),
                        parse_arguments(args or ""),
                    )
                ]
            return []
        if event in ("response.completed", "response.incomplete"):
            resp = obj.get("response") or {}
            self.read_usage(resp.get("usage") or {})
            if event == "response.completed":
                self.finish_reason = "tool_calls" if self._emitted else "stop"
            else:
                reason = (resp.get("incomplete_details") or {}).get("reason")
                self.finish_reason = "length" if reason == "max_output_tokens" else (reason or "length")
            self.done = True
            return []
        if event == "response.failed":
            err = (obj.get("response") or {}).get("error") or {}
            raise stream_error(502, err.get("code") or "server_error", err.get("message") or "response failed")
        if event == "error":
            raise stream_error(502, obj.get("code") or "server_error", obj.get("message") or "stream error")
        return []
