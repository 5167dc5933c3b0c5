"""Attachments, reasoning and structured output, unit by unit: the neutral request's parser
(contract/blocks.py, contract/options.py), each provider's build(), and the translators' reasoning
items. End to end through gunicorn: test_multimodal.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from flask_llm_proxy.config import load_settings
from flask_llm_proxy.contract.blocks import Policy, decoded_size, sniff
from flask_llm_proxy.contract.request import ChatRequest, parse_chat_request
from flask_llm_proxy.errors import InvalidRequest
from flask_llm_proxy.providers.anthropic import AnthropicAdapter, AnthropicTranslator
from flask_llm_proxy.providers.base import Reasoning
from flask_llm_proxy.providers.openai import ChatCompletionsAdapter, ChatTranslator
from flask_llm_proxy.providers.responses import ResponsesTranslator

SETTINGS = load_settings(
    {"LLM_PROXY_PROVIDERS": {"anthropic": {"api_key": "k", "models": ["*"]}, "openai": {"api_key": "k", "models": ["*"]}}}, environ={}
)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()
WEBP = base64.b64encode(b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 12).decode()
PDF = base64.b64encode(b"%PDF-1.7\n" + b"\x00" * 20).decode()


def parse(*blocks: Any, role: str = "user", policy: Policy = Policy(), **fields: Any) -> ChatRequest:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}] if role == "assistant" else []
    messages.append({"role": role, "content": [{"type": "text", "text": "look"}, *blocks]})
    if role == "assistant":
        messages.append({"role": "user", "content": "go on"})
    return parse_chat_request(
        {"model": "m", "messages": messages, **fields}, max_messages=50, max_tokens_cap=100_000, allow_responses=True, policy=policy
    )


def refused(path: str, *blocks: Any, **kw: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse(*blocks, **kw)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    return str(info.value)


# --- parsing ---------------------------------------------------------------------------------


def test_the_first_bytes_say_the_media_type() -> None:
    assert [sniff(d) for d in (PNG, WEBP, PDF, base64.b64encode(b"GIF89a....").decode(), "////")] == [
        "image/png",
        "image/webp",
        "application/pdf",
        "image/gif",
        None,
    ]
    assert decoded_size(base64.b64encode(b"x" * 10).decode()) == 10


def test_a_data_url_becomes_a_base64_source_in_every_form() -> None:
    url = "data:image/png;base64," + PNG
    for block in ({"type": "image_url", "image_url": url}, {"type": "image", "source": {"type": "url", "url": url}}):
        assert parse(block).messages[0]["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
        }


@pytest.mark.parametrize(
    "block, path, says",
    [
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "data:image/png;base64," + PNG}},
            "messages[0].content[1].source.data",
            "without the 'data:",
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG[:-1]}},
            "messages[0].content[1].source.data",
            "multiple of 4",
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": PNG}},
            "messages[0].content[1].source.data",
            "image/png data, but its media type says image/webp",
        ),
        ({"type": "image_url", "image_url": {"url": "data:image/png," + PNG}}, "messages[0].content[1].image_url.url", ";base64"),
        ({"type": "image", "source": {"type": "file", "file_id": "x"}}, "messages[0].content[1].source.type", "'base64' or 'url'"),
        ({"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "ultra"}}, "messages[0].content[1].detail", "'auto'"),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "application/msword", "data": PDF}},
            "messages[0].content[1].source.media_type",
            "application/pdf",
        ),
        (
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "https://x/a.pdf"}},
            "messages[0].content[1].file.file_data",
            "data URL",
        ),
        ({"type": "file", "file": {"file_id": "file-1"}}, "messages[0].content[1].file.file_id", "shared by all users"),
        ({"type": "image", "source": {"type": "url", "url": "https://x/a.png"}, "alt": "a cat"}, "messages[0].content[1].alt", "known:"),
    ],
    ids=[
        "data-url-in-base64",
        "not-base64",
        "mismatch",
        "not-base64-data-url",
        "unknown-source",
        "detail",
        "doc-type",
        "file-url",
        "file-id",
        "unknown-key",
    ],
)
def test_a_bad_attachment_is_refused_naming_its_path(block: Any, path: str, says: str) -> None:
    assert says in refused(path, block)


def test_attachments_belong_to_user_messages_and_thinking_to_assistant_ones() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
    refused("messages[2].content[1]", image, role="assistant")
    thinking = {"type": "thinking", "thinking": "hm", "signature": "sig"}
    refused("messages[0].content[1]", thinking)
    assert parse(thinking, role="assistant").messages[2]["content"][1] == thinking


def test_the_hosts_policy_limits_kinds_and_sizes() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    assert "turned them off" in refused("messages[0].content[1]", doc, policy=Policy(kinds=frozenset({"image"})))
    assert parse(image, policy=Policy(kinds=frozenset({"image"}))).messages
    assert "up to 10 bytes" in refused("messages[0].content[1].source", image, policy=Policy(max_bytes=10))


def test_a_text_document_and_its_anthropic_fields_are_kept() -> None:
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The text."},
        "title": "Notes",
        "context": "From the wiki",
        "citations": {"enabled": True},
        "cache_control": {"type": "ephemeral"},
    }
    assert parse(doc).messages[0]["content"][1] == doc


def test_an_image_counts_as_an_estimate_not_as_its_base64_in_the_input_size() -> None:
    big = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 300_000).decode()
    req = parse({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big}})
    assert req.input_size_hint() < 10_000 and "AAAA" not in req.text_for_log()


@pytest.mark.parametrize(
    "fields, path",
    [
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "on"}}, "thinking"),
        ({"thinking": {"type": "disabled", "budget_tokens": 2000}}, "thinking.budget_tokens"),
        ({"reasoning_effort": "Very High"}, "reasoning_effort"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"include_reasoning": "yes"}, "include_reasoning"),
        ({"enable_thinking": False, "thinking": {"type": "enabled", "budget_tokens": 2000}}, "enable_thinking"),
        ({"stop": ["A"], "stop_sequences": ["B"]}, "stop_sequences"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ],
)
def test_bad_reasoning_and_format_fields_are_refused_naming_them(fields: dict, path: str) -> None:
    refused(path, **fields)


# --- building the upstream body -------------------------------------------------------------


def build(adapter: Any, provider: str, *blocks: Any, **fields: Any) -> dict[str, Any]:
    return adapter.build(parse(*blocks, **fields), SETTINGS.providers[provider], SETTINGS)


@pytest.mark.parametrize(
    "fields, path",
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "temperature": 0.5, "max_tokens": 4096}, "temperature"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5, "max_tokens": 4096}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "top_p": 0.5, "max_tokens": 4096}, "top_p"),
        (
            {
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "tools": [{"name": "f"}],
                "tool_choice": "required",
                "max_tokens": 4096,
            },
            "tool_choice",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking.budget_tokens"),  # default max_tokens 1024
    ],
)
def test_anthropic_thinking_rules_are_checked_before_the_call(fields: dict, path: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build(AnthropicAdapter(), "anthropic", **fields)
    assert str(info.value).startswith(f"{path}: ")


def test_anthropic_takes_the_thinking_with_top_p_near_one_and_auto_tools() -> None:
    body = build(
        AnthropicAdapter(),
        "anthropic",
        thinking={"type": "enabled", "budget_tokens": 1024},
        max_tokens=2048,
        top_p=0.95,
        tools=[{"name": "f"}],
        tool_choice="auto",
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["top_p"] == 0.95


def test_openai_refuses_what_only_anthropic_takes() -> None:
    cached = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}, "cache_control": {"type": "ephemeral"}}
    doc_url = {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}
    cited = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "citations": {"enabled": True}}
    for blocks, fields, path in (
        ((cached,), {}, "messages[0].content[1].cache_control"),
        ((doc_url,), {}, "messages[0].content[1].source"),
        ((cited,), {}, "messages[0].content[1].citations"),
        ((), {"tools": [{"name": "f", "cache_control": {"type": "ephemeral"}}]}, "tools[0].cache_control"),
    ):
        with pytest.raises(InvalidRequest) as info:
            build(ChatCompletionsAdapter(), "openai", *blocks, **fields)
        assert str(info.value).startswith(f"{path}: "), str(info.value)


def test_strict_tools_reach_both_apis() -> None:
    tools = [{"name": "f", "parameters": {"type": "object"}, "strict": True}]
    assert build(AnthropicAdapter(), "anthropic", tools=tools)["tools"] == [
        {"name": "f", "input_schema": {"type": "object"}, "strict": True}
    ]
    assert build(ChatCompletionsAdapter(), "openai", tools=tools)["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]


def test_a_system_prompt_with_a_cache_breakpoint_is_sent_as_blocks() -> None:
    req = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Rules."},
                {"role": "system", "content": [{"type": "text", "text": "Long context.", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": "Hi"},
            ],
        },
        max_messages=9,
        max_tokens_cap=9999,
        allow_responses=False,
    )
    body = AnthropicAdapter().build(req, SETTINGS.providers["anthropic"], SETTINGS)
    assert body["system"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": "Long context.", "cache_control": {"type": "ephemeral"}},
    ]


def test_more_than_four_cache_breakpoints_are_refused_for_anthropic() -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    tools = [{"name": f"t{i}", "cache_control": {"type": "ephemeral"}} for i in range(2)]
    assert build(AnthropicAdapter(), "anthropic", marked, marked, tools=tools)["tools"][1]["cache_control"]
    with pytest.raises(InvalidRequest) as info:
        build(AnthropicAdapter(), "anthropic", marked, marked, marked, tools=tools)
    assert str(info.value).startswith("messages[0].content[3].cache_control: ") and "at most 4" in str(info.value)


# --- reasoning out of the translators --------------------------------------------------------


def feed(translator: Any, events: list[tuple[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for event, data in events:
        out += translator.feed(event, data if isinstance(data, str) else json.dumps(data))
    return out


ANTHROPIC_THINKING = [
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    ),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hm,"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": " yes."}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "OPAQUE"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "42"}}),
]


def test_anthropic_thinking_becomes_reasoning_items_only_when_asked() -> None:
    assert feed(AnthropicTranslator(reasoning=True), ANTHROPIC_THINKING) == [
        Reasoning("Hm,"),
        Reasoning(" yes."),
        Reasoning("", signature="SIG"),
        Reasoning("", redacted="OPAQUE"),
        "42",
    ]
    quiet = AnthropicTranslator()
    assert feed(quiet, ANTHROPIC_THINKING) == ["42"]
    assert quiet.usage.hidden_deltas == 2  # counted for the estimate of a cut stream


def test_anthropic_thinking_tokens_are_read_when_reported_apart() -> None:
    t = AnthropicTranslator()
    t.read_usage({"output_tokens": 120, "output_tokens_details": {"thinking_tokens": 80}})
    assert (t.usage.output_tokens, t.usage.reasoning_tokens) == (120, 80)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_chat_reasoning_deltas_of_compatible_servers(field: str) -> None:
    def chunk(delta: dict) -> str:
        return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    events = [
        ("message", chunk({field: "Think."})),
        ("message", chunk({"content": None, field: " More."})),
        ("message", chunk({"content": "Answer"})),
        (
            "message",
            json.dumps(
                {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 2}}}
            ),
        ),
    ]
    t = ChatTranslator(reasoning=True)
    assert feed(t, events) == [Reasoning("Think."), Reasoning(" More."), "Answer"]
    assert (t.usage.output_tokens, t.usage.reasoning_tokens) == (9, 2)
    assert feed(ChatTranslator(), events) == ["Answer"]


def test_responses_reasoning_summary_and_text_deltas() -> None:
    events = [
        ("response.reasoning_summary_text.delta", {"type": "response.reasoning_summary_text.delta", "delta": "Plan"}),
        ("response.reasoning_text.delta", {"type": "response.reasoning_text.delta", "delta": " it"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Done"}),
    ]
    assert feed(ResponsesTranslator(reasoning=True), events) == [Reasoning("Plan"), Reasoning(" it"), "Done"]
    assert feed(ResponsesTranslator(), events) == ["Done"]


def test_an_error_does_not_echo_a_huge_client_value_back() -> None:
    for body in (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "k" * 100_000: 1},
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "x" * 100_000, "data": PNG}}]}
            ],
        },
    ):
        with pytest.raises(InvalidRequest) as info:
            parse_chat_request(body, max_messages=5, max_tokens_cap=99, allow_responses=True)
        assert len(str(info.value)) < 1000 and len(info.value.extra["param"]) < 200


def test_a_profile_narrows_its_providers_attachment_policy() -> None:
    from flask_llm_proxy.access.profiles import attachment_policy, estimate_tokens
    from flask_llm_proxy.errors import ConfigError

    s = load_settings(
        {
            "LLM_PROXY_PROVIDERS": {
                "p": {
                    "type": "anthropic",
                    "api_key": "k",
                    "models": ["*"],
                    "attachments": ["image", "document"],
                    "max_attachment_bytes": 5000,
                }
            },
            "LLM_PROXY_PROFILES": {
                "a": {"provider": "p", "model": "m", "attachments": ["image"], "max_attachment_bytes": 10_000},
                "b": {"provider": "p", "model": "m", "attachments": False, "max_attachment_bytes": 100},
            },
        },
        environ={},
    )
    provider = s.providers["p"]
    assert attachment_policy(provider, None) == Policy(frozenset({"image", "document"}), 5000)
    assert attachment_policy(provider, s.profiles["a"]) == Policy(frozenset({"image"}), 5000)
    assert attachment_policy(provider, s.profiles["b"]) == Policy(frozenset(), 100)
    with pytest.raises(ConfigError, match=r"LLM_PROXY_PROFILES\['c'\]\.attachments"):
        load_settings(
            {
                "LLM_PROXY_PROVIDERS": {"p": {"type": "anthropic", "api_key": "k", "models": ["*"]}},
                "LLM_PROXY_PROFILES": {"c": {"provider": "p", "model": "m", "attachments": ["audio"]}},
            },
            environ={},
        )
    photo = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400_000}}]
    assert estimate_tokens(photo) < 2_000  # the image as ~1,600 tokens, not 100,000
