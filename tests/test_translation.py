"""Request building and stream translation per upstream API (flask_llm_proxy/providers/).

``build()`` turns the neutral ChatRequest into what each API accepts (CONTRACT.md, "Upstream
side"); a translator's ``feed()`` turns upstream SSE events into text deltas and tool calls, and
keeps the finish reason, the billed usage and whether the final event was seen.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from flask_llm_proxy.config import Settings, load_settings
from flask_llm_proxy.contract.request import ChatRequest, parse_chat_request
from flask_llm_proxy.errors import InvalidRequest, UpstreamError
from flask_llm_proxy.providers import adapter_for
from flask_llm_proxy.providers.anthropic import AnthropicAdapter, AnthropicTranslator
from flask_llm_proxy.providers.base import ToolCall, Translator
from flask_llm_proxy.providers.openai import ChatCompletionsAdapter, ChatTranslator
from flask_llm_proxy.providers.responses import ResponsesAdapter, ResponsesTranslator

SETTINGS: Settings = load_settings(
    {
        "LLM_PROXY_DEFAULT_MAX_TOKENS": 321,
        "LLM_PROXY_PROVIDERS": {
            "anthropic": {"api_key": "sk-ant-test", "models": ["claude-*"]},
            "openai": {"api_key": "sk-openai-test", "models": ["gpt-*"]},
            "local": {"type": "openai", "base_url": "http://localhost:8000/v1", "api_key": "x", "models": ["*"]},
        },
    },
    environ={},
)
ANTHROPIC = SETTINGS.providers["anthropic"]
OPENAI = SETTINGS.providers["openai"]
LOCAL = SETTINGS.providers["local"]

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def req(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "claude-3-5-sonnet-20241022", "messages": [{"role": "user", "content": "Hello"}]}
    body.update(fields)
    if body["messages"] is None:  # the Responses form: ``input`` instead of ``messages``
        del body["messages"]
    return parse_chat_request(body, max_messages=100, max_tokens_cap=100_000, allow_responses=True)


def tool_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "4 degrees, rain"}]},
    ]


def anthropic_body(**fields: Any) -> dict[str, Any]:
    return AnthropicAdapter().build(req(**fields), ANTHROPIC, SETTINGS)


def chat_body(provider=OPENAI, **fields: Any) -> dict[str, Any]:
    return ChatCompletionsAdapter().build(req(**fields), provider, SETTINGS)


def feed_all(translator: Translator, events: list[tuple[str, Any]]) -> list[Any]:
    items: list[Any] = []
    for event, data in events:
        items.extend(translator.feed(event, data if isinstance(data, str) else json.dumps(data)))
    return items


# ============================================================================================
# Anthropic Messages API: build()
# ============================================================================================


def test_anthropic_system_messages_go_to_the_top_level_system_field():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Use metric"}, {"type": "text", "text": "units."}]},
        {"role": "user", "content": "Hi"},
    ]
    body = anthropic_body(messages=msgs)
    assert body["system"] == "Be brief.\n\nUse metric\nunits."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


def test_anthropic_has_no_system_field_without_system_messages():
    assert "system" not in anthropic_body()


def test_anthropic_tool_definitions_use_input_schema():
    body = anthropic_body(
        tools=[
            {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_SCHEMA},
            {"type": "function", "function": {"name": "noop"}},
        ]
    )
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA},
        {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
    ]


def test_anthropic_tool_use_carries_input_and_tool_result_carries_content():
    body = anthropic_body(messages=tool_conversation())
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "4 degrees, rain"}]},
    ]


def test_anthropic_tool_result_error_flag_is_kept():
    msgs = tool_conversation()
    msgs[3]["content"][0]["is_error"] = True
    block = anthropic_body(messages=msgs)["messages"][2]["content"][0]
    assert block["is_error"] is True


def test_anthropic_refuses_a_whitespace_only_stop_sequence_naming_it():
    with pytest.raises(InvalidRequest) as info:
        anthropic_body(stop=["END", "\n\n"])
    assert info.value.message.startswith("stop[1]: ") and "whitespace" in info.value.message


@pytest.mark.parametrize("provider", ["openai", "local"])
def test_openai_takes_whitespace_stop_sequences_as_they_are(provider):
    body = chat_body(SETTINGS.providers[provider], stop=["\n\n", " "])
    assert body["stop"] == ["\n\n", " "]


def test_anthropic_stop_becomes_stop_sequences():
    body = anthropic_body(stop="END")
    assert body["stop_sequences"] == ["END"]
    assert "stop" not in body


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("auto", {"type": "auto"}),
        ("any", {"type": "any"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"name": "get_weather"}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_anthropic_tool_choice_is_an_object(choice, expected):
    body = anthropic_body(tools=[{"name": "get_weather"}], tool_choice=choice)
    assert body["tool_choice"] == expected


def test_anthropic_max_tokens_defaults_to_the_setting():
    assert anthropic_body()["max_tokens"] == 321


def test_anthropic_max_tokens_from_the_request_wins():
    assert anthropic_body(max_new_tokens=77)["max_tokens"] == 77


def test_anthropic_sampling_fields_are_forwarded():
    body = anthropic_body(temperature=0.5, top_p=0.9, top_k=40)
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.5, 0.9, 40)


def test_anthropic_temperature_above_one_is_refused():
    with pytest.raises(InvalidRequest) as info:
        anthropic_body(temperature=1.5)
    assert str(info.value).startswith("temperature:")
    assert info.value.extra["param"] == "temperature"


def test_anthropic_temperature_of_exactly_one_is_accepted():
    assert anthropic_body(temperature=1)["temperature"] == 1.0


def test_anthropic_tool_result_that_answers_no_tool_use_is_refused():
    msgs = tool_conversation()
    msgs[3]["content"][0]["tool_use_id"] = "call_unknown"
    with pytest.raises(InvalidRequest) as info:
        anthropic_body(messages=msgs)
    # the path uses the client's own message indices, system messages included
    assert info.value.extra["param"] == "messages[3].content[0].tool_use_id"
    assert "call_unknown" in str(info.value)


def test_anthropic_tool_result_answering_an_older_assistant_turn_is_refused():
    msgs = tool_conversation() + [
        {"role": "assistant", "content": "It rains."},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "again"}]},
    ]
    with pytest.raises(InvalidRequest) as info:
        anthropic_body(messages=msgs)
    assert info.value.extra["param"] == "messages[5].content[0].tool_use_id"


def test_anthropic_tool_result_in_the_first_user_message_is_refused():
    msgs = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "x"}]}]
    with pytest.raises(InvalidRequest):
        anthropic_body(messages=msgs)


def test_anthropic_parallel_tool_results_are_accepted():
    msgs = tool_conversation()
    msgs[2]["content"].append({"type": "tool_use", "id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}})
    msgs[3]["content"].append({"type": "tool_result", "tool_use_id": "call_2", "result": "sun"})
    assert [b["tool_use_id"] for b in anthropic_body(messages=msgs)["messages"][2]["content"]] == ["call_1", "call_2"]


def test_anthropic_first_non_system_message_must_be_from_the_user():
    with pytest.raises(InvalidRequest) as info:
        anthropic_body(
            messages=[{"role": "system", "content": "x"}, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]
        )
    assert info.value.extra["param"] == "messages"


def test_anthropic_body_always_streams():
    body = anthropic_body(stream=False)
    assert body["stream"] is True
    assert body["model"] == "claude-3-5-sonnet-20241022"


@pytest.mark.parametrize(
    "field, value",
    [("seed", 3), ("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("repetition_penalty", 1.1), ("reasoning_effort", "low")],
)
def test_anthropic_refuses_by_name_the_fields_its_api_does_not_take(field, value):
    with pytest.raises(InvalidRequest) as info:
        anthropic_body(**{field: value})
    assert str(info.value).startswith(f"{field}: ")


def test_anthropic_auth_headers_carry_the_key_and_the_version():
    assert AnthropicAdapter().auth_headers(ANTHROPIC) == {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    assert AnthropicAdapter.path == "/v1/messages"


# ============================================================================================
# OpenAI Chat Completions: build()
# ============================================================================================


def test_chat_tools_are_wrapped_as_functions():
    body = chat_body(tools=[{"name": "get_weather", "description": "Weather now", "parameters": WEATHER_SCHEMA}, {"name": "noop"}])
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_SCHEMA}},
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
    ]


def test_chat_conversation_with_tools_is_translated():
    body = chat_body(messages=tool_conversation())
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"},
    ]


def test_chat_tool_call_arguments_are_a_json_string():
    msgs = tool_conversation()
    msgs[2]["content"][1]["arguments"] = {"city": "Zürich", "days": [1, 2], "q": 'say "hi"'}
    call = chat_body(messages=msgs)["messages"][2]["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"city": "Zürich", "days": [1, 2], "q": 'say "hi"'}


def test_chat_assistant_message_with_only_tool_calls_has_null_content():
    msgs = tool_conversation()
    msgs[2]["content"] = msgs[2]["content"][1:]
    msg = chat_body(messages=msgs)["messages"][2]
    assert msg["content"] is None and len(msg["tool_calls"]) == 1


def test_chat_tool_results_come_before_text_of_the_same_turn():
    msgs = tool_conversation()
    msgs[3]["content"].append({"type": "text", "text": "Thanks."})
    assert chat_body(messages=msgs)["messages"][3:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
    ]


def test_chat_structured_tool_result_is_sent_as_json_text():
    msgs = tool_conversation()
    msgs[3]["content"][0]["result"] = {"temp": 4}
    assert chat_body(messages=msgs)["messages"][3]["content"] == '{"temp":4}'


def test_chat_asks_for_usage_in_the_stream():
    body = chat_body(stream=False)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_chat_max_tokens_uses_max_completion_tokens_for_the_official_api():
    body = chat_body(OPENAI, max_new_tokens=50)
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body


def test_chat_max_tokens_uses_max_tokens_for_compatible_servers():
    body = chat_body(LOCAL, max_new_tokens=50)
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body


def test_chat_max_tokens_is_left_out_when_not_requested():
    body = chat_body(LOCAL)
    assert "max_tokens" not in body and "max_completion_tokens" not in body


def test_chat_sampling_fields_are_forwarded():
    body = chat_body(temperature=1.5, top_p=0.5, seed=7, stop="END", presence_penalty=0.5, frequency_penalty=-1)
    assert (body["temperature"], body["top_p"], body["seed"], body["stop"]) == (1.5, 0.5, 7, ["END"])
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -1.0)


@pytest.mark.parametrize("field, value", [("top_k", 40), ("repetition_penalty", 1.1)])
def test_top_k_and_repetition_penalty_reach_a_compatible_server_and_are_refused_by_openai(field, value):
    assert chat_body(LOCAL, **{field: value})[field] == value
    with pytest.raises(InvalidRequest) as info:
        chat_body(OPENAI, **{field: value})
    assert str(info.value).startswith(f"{field}: ") and "vLLM" in str(info.value)


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("auto", "auto"),
        ("none", "none"),
        ("any", "required"),
        ("required", "required"),
        ({"name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_chat_tool_choice(choice, expected):
    assert chat_body(tools=[{"name": "f"}], tool_choice=choice)["tool_choice"] == expected


def test_chat_auth_header_is_a_bearer_token():
    assert ChatCompletionsAdapter().auth_headers(OPENAI) == {"authorization": "Bearer sk-openai-test"}
    assert ChatCompletionsAdapter.path == "/chat/completions"


# ============================================================================================
# OpenAI Responses: build() and adapter choice
# ============================================================================================


def test_responses_body_forwards_its_fields_plus_model_and_stream():
    r = req(
        messages=None,
        model="gpt-4o",
        input="Hi",
        instructions="Be brief.",
        max_new_tokens=20,
        stream=False,
        include_reasoning=True,
        enable_thinking=False,
    )
    body = ResponsesAdapter().build(r, OPENAI, SETTINGS)
    assert body == {"input": "Hi", "instructions": "Be brief.", "max_output_tokens": 20, "model": "gpt-4o", "stream": True}


def test_responses_build_does_not_modify_the_request():
    r = req(messages=None, model="gpt-4o", input="Hi")
    ResponsesAdapter().build(r, OPENAI, SETTINGS)
    assert r.responses_body == {"input": "Hi"}


def test_adapter_is_chosen_by_provider_type_and_body_form():
    assert isinstance(adapter_for(ANTHROPIC, req()), AnthropicAdapter)
    assert isinstance(adapter_for(OPENAI, req()), ChatCompletionsAdapter)
    assert isinstance(adapter_for(LOCAL, req(messages=None, input="Hi")), ResponsesAdapter)
    assert ResponsesAdapter.path == "/responses"
    assert ResponsesAdapter().auth_headers(OPENAI) == {"authorization": "Bearer sk-openai-test"}


# ============================================================================================
# Anthropic stream translation
# ============================================================================================


def a_start(input_tokens: int = 25, **extra: int) -> tuple[str, dict]:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, **extra}
    return ("message_start", {"type": "message_start", "message": {"id": "msg_1", "role": "assistant", "content": [], "usage": usage}})


def a_text(text: str, index: int = 0) -> tuple[str, dict]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})


def a_stop_reason(reason: str, output_tokens: int = 15) -> tuple[str, dict]:
    return (
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": {"output_tokens": output_tokens}},
    )


A_BLOCK_START = ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
A_BLOCK_STOP = ("content_block_stop", {"type": "content_block_stop", "index": 0})
A_STOP = ("message_stop", {"type": "message_stop"})


def test_anthropic_text_deltas_become_text_items():
    t = AnthropicTranslator()
    items = feed_all(
        t, [a_start(), A_BLOCK_START, ("ping", {"type": "ping"}), a_text("Hello"), a_text(", wörld 👋"), a_text(""), A_BLOCK_STOP]
    )
    assert items == ["Hello", ", wörld 👋"]
    assert not t.done


def test_anthropic_full_stream_sets_usage_finish_reason_and_done():
    t = AnthropicTranslator()
    feed_all(t, [a_start(25), A_BLOCK_START, a_text("Hi"), A_BLOCK_STOP])
    assert t.usage.input_tokens == 25 and not t.usage.reported
    feed_all(t, [a_stop_reason("end_turn", 15)])
    assert (t.usage.input_tokens, t.usage.output_tokens, t.usage.reported) == (25, 15, True)
    assert t.finish_reason == "stop" and not t.done
    feed_all(t, [A_STOP])
    assert t.done


def test_anthropic_cache_token_counts_are_kept():
    t = AnthropicTranslator()
    feed_all(t, [a_start(10, cache_read_input_tokens=100, cache_creation_input_tokens=7)])
    assert (t.usage.cache_read, t.usage.cache_write) == (100, 7)


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
    ],
)
def test_anthropic_finish_reasons_are_mapped(reason, expected):
    t = AnthropicTranslator()
    feed_all(t, [a_start(), a_stop_reason(reason)])
    assert t.finish_reason == expected


def test_anthropic_tool_call_is_assembled_from_json_fragments():
    t = AnthropicTranslator()
    events = [
        a_start(),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            },
        ),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Zü'}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'rich", "days": [1,'}},
        ),
    ]
    assert feed_all(t, events) == []
    items = feed_all(
        t,
        [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " 2]}"}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ],
    )
    assert items == [ToolCall("toolu_1", "get_weather", {"city": "Zürich", "days": [1, 2]})]
    feed_all(t, [a_stop_reason("tool_use"), A_STOP])
    assert t.finish_reason == "tool_calls" and t.done


def test_anthropic_tool_call_without_input_deltas_has_empty_arguments():
    t = AnthropicTranslator()
    items = feed_all(
        t,
        [
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}}},
            ),
            A_BLOCK_STOP,
        ],
    )
    assert items == [ToolCall("t", "now", {})]


def test_anthropic_text_and_tool_blocks_interleave_by_index():
    t = AnthropicTranslator()
    items = feed_all(
        t,
        [
            A_BLOCK_START,
            a_text("Let me look."),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a":1}'}},
            ),
            A_BLOCK_STOP,
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ],
    )
    assert items == ["Let me look.", ToolCall("t1", "f", {"a": 1})]


def test_anthropic_thinking_and_signature_deltas_are_not_text():
    t = AnthropicTranslator()
    items = feed_all(
        t,
        [
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}}),
            A_BLOCK_STOP,
        ],
    )
    assert items == []


def test_anthropic_unknown_events_are_ignored():
    t = AnthropicTranslator()
    assert feed_all(t, [("content_block_future", {"type": "x"}), ("message", "{}"), ("ping", "")]) == []
    assert not t.done and t.finish_reason is None


@pytest.mark.parametrize(
    "etype, status, type_",
    [
        ("overloaded_error", 503, "upstream_overloaded"),
        ("rate_limit_error", 429, "upstream_rate_limited"),
        ("api_error", 502, "upstream_error"),
    ],
)
def test_anthropic_error_event_raises_an_upstream_error(etype, status, type_):
    t = AnthropicTranslator()
    feed_all(t, [a_start(), A_BLOCK_START, a_text("Hi")])
    with pytest.raises(UpstreamError) as info:
        t.feed("error", json.dumps({"type": "error", "error": {"type": etype, "message": "Overloaded now"}}))
    assert (info.value.status, info.value.type) == (status, type_)
    assert "Overloaded now" in info.value.message
    assert not t.done


def test_anthropic_error_event_without_data_still_raises():
    with pytest.raises(UpstreamError) as info:
        AnthropicTranslator().feed("error", "")
    assert info.value.status == 502


# ============================================================================================
# OpenAI Chat Completions stream translation
# ============================================================================================


def c_chunk(delta: dict, reason: str | None = None, **extra: Any) -> tuple[str, dict]:
    return (
        "message",
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            **extra,
        },
    )


def c_call(index: int, args: str, id: str | None = None, name: str | None = None) -> dict:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id:
        call.update(id=id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


C_USAGE = (
    "message",
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11, "prompt_tokens_details": {"cached_tokens": 4}},
    },
)
C_DONE = ("message", "[DONE]")


def test_chat_text_deltas_become_text_items():
    t = ChatTranslator()
    items = feed_all(
        t,
        [
            c_chunk({"role": "assistant", "content": ""}),
            c_chunk({"content": "Hello"}),
            c_chunk({"content": " wörld 👋"}),
            c_chunk({"content": None}),
        ],
    )
    assert items == ["Hello", " wörld 👋"]
    assert not t.done and t.finish_reason is None


def test_chat_full_stream_with_usage_chunk():
    t = ChatTranslator()
    feed_all(t, [c_chunk({"content": "Hi"}), c_chunk({}, "stop")])
    assert t.finish_reason == "stop" and t.done and not t.usage.reported
    feed_all(t, [C_USAGE, C_DONE])
    assert (t.usage.input_tokens, t.usage.output_tokens, t.usage.cache_read, t.usage.reported) == (9, 2, 4, True)
    assert t.done


def test_chat_usage_in_the_finish_chunk_is_read_too():
    t = ChatTranslator()
    feed_all(t, [c_chunk({}, "length", usage={"prompt_tokens": 5, "completion_tokens": 7})])
    assert (t.finish_reason, t.usage.input_tokens, t.usage.output_tokens, t.usage.reported) == ("length", 5, 7, True)


def test_chat_null_usage_on_every_chunk_is_ignored():
    t = ChatTranslator()
    assert feed_all(t, [c_chunk({"content": "a"}, usage=None)]) == ["a"]
    assert not t.usage.reported


def test_chat_done_marker_alone_ends_the_stream():
    t = ChatTranslator()
    feed_all(t, [c_chunk({"content": "Hi"})])
    assert not t.done
    feed_all(t, [C_DONE])
    assert t.done


def test_chat_parallel_tool_calls_are_assembled_from_fragments_per_index():
    t = ChatTranslator()
    events = [
        c_chunk({"role": "assistant", "content": None}),
        c_chunk(c_call(0, "", id="call_a", name="get_weather")),
        c_chunk(c_call(1, "", id="call_b", name="get_time")),
        c_chunk(c_call(0, '{"city": ')),
        c_chunk(c_call(1, '{"tz": "UTC"}')),
        c_chunk(c_call(0, '"Oslo"}')),
    ]
    assert feed_all(t, events) == []
    items = feed_all(t, [c_chunk({}, "tool_calls")])
    assert items == [ToolCall("call_a", "get_weather", {"city": "Oslo"}), ToolCall("call_b", "get_time", {"tz": "UTC"})]
    assert t.finish_reason == "tool_calls" and t.done
    assert feed_all(t, [C_USAGE, C_DONE]) == [], "tool calls are handed on once"


def test_chat_tool_calls_are_flushed_by_done_when_there_is_no_finish_reason():
    t = ChatTranslator()
    feed_all(t, [c_chunk(c_call(0, '{"a":1}', id="c1", name="f"))])
    assert feed_all(t, [C_DONE]) == [ToolCall("c1", "f", {"a": 1})]


@pytest.mark.parametrize(
    "args, parsed", [("", {}), ("  ", {}), ("not json", "not json"), ('{"a": [1, {"b": null}]}', {"a": [1, {"b": None}]})]
)
def test_chat_tool_arguments_are_parsed_when_they_are_json(args, parsed):
    t = ChatTranslator()
    items = feed_all(t, [c_chunk(c_call(0, args, id="c1", name="f")), c_chunk({}, "tool_calls")])
    assert items == [ToolCall("c1", "f", parsed)]


def test_chat_text_and_finish_reason_in_one_chunk():
    t = ChatTranslator()
    assert feed_all(t, [c_chunk({"content": "end"}, "stop")]) == ["end"]
    assert t.done


@pytest.mark.parametrize(
    "error, status, type_",
    [
        ({"message": "boom", "type": "server_error"}, 502, "upstream_error"),
        ({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}, 502, "upstream_error"),
        ({"message": "slow down", "code": "rate_limit_exceeded"}, 429, "upstream_rate_limited"),
        ({"message": "busy", "type": "overloaded"}, 503, "upstream_overloaded"),
    ],
)
def test_chat_error_chunk_raises_an_upstream_error(error, status, type_):
    t = ChatTranslator()
    with pytest.raises(UpstreamError) as info:
        t.feed("message", json.dumps({"error": error}))
    assert (info.value.status, info.value.type) == (status, type_)
    assert error["message"] in info.value.message


def test_chat_error_given_as_a_string_still_raises():
    with pytest.raises(UpstreamError) as info:
        ChatTranslator().feed("message", '{"error": "model crashed"}')
    assert "model crashed" in info.value.message


def test_chat_chunks_without_choices_or_usage_are_ignored():
    t = ChatTranslator()
    assert (
        feed_all(t, [("message", {"id": "x", "object": "chat.completion.chunk", "choices": []}), ("message", {"object": "keepalive"})])
        == []
    )
    assert not t.done


# ============================================================================================
# OpenAI Responses stream translation
# ============================================================================================


def r(event: str, **data: Any) -> tuple[str, dict]:
    return (event, {"type": event, **data})


R_USAGE = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17, "input_tokens_details": {"cached_tokens": 3}}


def test_responses_text_deltas_and_completed_usage():
    t = ResponsesTranslator()
    items = feed_all(
        t,
        [
            r("response.created", response={"id": "resp_1", "status": "in_progress"}),
            r("response.in_progress", response={"id": "resp_1"}),
            r("response.output_item.added", output_index=0, item={"type": "message", "id": "m"}),
            r("response.content_part.added", output_index=0, content_index=0, part={"type": "output_text", "text": ""}),
            r("response.output_text.delta", output_index=0, content_index=0, delta="Hello"),
            r("response.output_text.delta", output_index=0, content_index=0, delta=""),
            r("response.output_text.delta", output_index=0, content_index=0, delta=" wörld 👋"),
            r("response.output_text.done", output_index=0, content_index=0, text="Hello wörld 👋"),
            r("response.output_item.done", output_index=0, item={"type": "message", "id": "m"}),
        ],
    )
    assert items == ["Hello", " wörld 👋"]
    assert not t.done and not t.usage.reported
    feed_all(t, [r("response.completed", response={"id": "resp_1", "status": "completed", "usage": R_USAGE})])
    assert (t.usage.input_tokens, t.usage.output_tokens, t.usage.cache_read, t.usage.reported) == (12, 5, 3, True)
    assert t.finish_reason == "stop" and t.done


def test_responses_function_call_is_assembled_from_argument_deltas():
    t = ResponsesTranslator()
    items = feed_all(
        t,
        [
            r(
                "response.output_item.added",
                output_index=1,
                item={"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": ""},
            ),
            r("response.function_call_arguments.delta", output_index=1, delta='{"city":'),
            r("response.function_call_arguments.delta", output_index=1, delta=' "Oslo"}'),
            r(
                "response.output_item.done",
                output_index=1,
                item={"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather"},
            ),
        ],
    )
    assert items == [ToolCall("call_1", "get_weather", {"city": "Oslo"})]
    feed_all(t, [r("response.completed", response={"usage": R_USAGE})])
    assert t.finish_reason == "tool_calls" and t.done


def test_responses_function_call_arguments_of_the_done_item_win():
    t = ResponsesTranslator()
    items = feed_all(
        t,
        [
            r("response.output_item.added", output_index=0, item={"type": "function_call", "call_id": "c", "name": "f"}),
            r("response.function_call_arguments.delta", output_index=0, delta='{"partial'),
            r(
                "response.output_item.done",
                output_index=0,
                item={"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"a": 2}'},
            ),
        ],
    )
    assert items == [ToolCall("c", "f", {"a": 2})]


def test_responses_incomplete_for_max_output_tokens_is_length():
    t = ResponsesTranslator()
    feed_all(t, [r("response.incomplete", response={"incomplete_details": {"reason": "max_output_tokens"}, "usage": R_USAGE})])
    assert t.finish_reason == "length" and t.done and t.usage.output_tokens == 5


def test_responses_incomplete_for_content_filter_keeps_the_reason():
    t = ResponsesTranslator()
    feed_all(t, [r("response.incomplete", response={"incomplete_details": {"reason": "content_filter"}})])
    assert t.finish_reason == "content_filter" and t.done and not t.usage.reported


def test_responses_failed_raises_an_upstream_error():
    t = ResponsesTranslator()
    with pytest.raises(UpstreamError) as info:
        feed_all(t, [r("response.failed", response={"status": "failed", "error": {"code": "server_error", "message": "model broke"}})])
    assert info.value.status == 502 and "model broke" in info.value.message


@pytest.mark.parametrize("code, status", [("rate_limit_exceeded", 429), ("server_error", 502), (None, 502)])
def test_responses_error_event_raises_an_upstream_error(code, status):
    with pytest.raises(UpstreamError) as info:
        ResponsesTranslator().feed("error", json.dumps({"type": "error", "code": code, "message": "nope", "param": None}))
    assert info.value.status == status and "nope" in info.value.message


def test_responses_unknown_events_are_ignored():
    t = ResponsesTranslator()
    items = feed_all(
        t,
        [
            r("response.reasoning_summary_text.delta", delta="thinking..."),
            r("response.web_search_call.in_progress", output_index=0),
            r("response.future_event", x=1),
            ("message", "{}"),
            ("keepalive", "not json"),
        ],
    )
    assert items == [] and not t.done


# ============================================================================================
# The operator's output cap (LLM_PROXY_MAX_TOKENS, a provider's max_tokens) holds even when the
# client sends no max_tokens: leaving the field out must not lift a cost limit.
# ============================================================================================

CAPPED: Settings = load_settings(
    {
        "LLM_PROXY_MAX_TOKENS": 200,
        "LLM_PROXY_PROVIDERS": {
            "anthropic": {"api_key": "k", "models": ["*"]},
            "anthropic-small": {"type": "anthropic", "api_key": "k", "models": ["*"], "max_tokens": 100},
            "openai": {"api_key": "k", "models": ["*"]},
            "local": {"type": "openai", "base_url": "http://localhost:8000/v1", "api_key": "k", "models": ["*"], "max_tokens": 100},
        },
    },
    environ={},
)


def test_anthropic_default_max_tokens_is_held_to_the_global_cap():
    body = AnthropicAdapter().build(req(), CAPPED.providers["anthropic"], CAPPED)
    assert body["max_tokens"] == 200  # not the default 1024


def test_anthropic_default_max_tokens_is_held_to_the_provider_cap():
    body = AnthropicAdapter().build(req(), CAPPED.providers["anthropic-small"], CAPPED)
    assert body["max_tokens"] == 100


def test_anthropic_default_below_the_cap_is_kept():
    assert AnthropicAdapter().build(req(), ANTHROPIC, SETTINGS)["max_tokens"] == 321  # no cap configured


def test_chat_without_max_tokens_sends_the_cap():
    assert ChatCompletionsAdapter().build(req(), CAPPED.providers["openai"], CAPPED)["max_completion_tokens"] == 200
    assert ChatCompletionsAdapter().build(req(), CAPPED.providers["local"], CAPPED)["max_tokens"] == 100


def test_chat_request_max_tokens_under_the_cap_is_kept():
    assert ChatCompletionsAdapter().build(req(max_tokens=50), CAPPED.providers["local"], CAPPED)["max_tokens"] == 50


def test_responses_without_max_output_tokens_sends_the_cap():
    body = ResponsesAdapter().build(req(messages=None, input="Hi"), CAPPED.providers["local"], CAPPED)
    assert body["max_output_tokens"] == 100
    body = ResponsesAdapter().build(req(messages=None, input="Hi", max_output_tokens=20), CAPPED.providers["openai"], CAPPED)
    assert body["max_output_tokens"] == 20


def test_consecutive_messages_of_one_role_become_one_anthropic_turn():
    """Parallel tool results sent as one user message each (OpenAI's shape) answer one assistant turn."""
    msgs = tool_conversation()
    msgs[2]["content"].append({"type": "tool_use", "id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}})
    msgs += [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_2", "result": "sun"}]},
        {"role": "user", "content": "and tomorrow?"},
    ]
    body = anthropic_body(messages=msgs)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "4 degrees, rain"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "sun"},
        {"type": "text", "text": "and tomorrow?"},
    ]
