"""parse_chat_request (flask_llm_proxy/chat.py): the neutral request of CONTRACT.md.

Every refusal is an ``InvalidRequest`` (400) whose message starts with the path of the bad field,
so a client developer can fix the request without reading proxy code.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from flask_llm_proxy.contract.request import ChatRequest, parse_chat_request
from flask_llm_proxy.errors import InvalidRequest

CAP = 4096


def parse(body: Any, *, allow_responses: bool = False, max_messages: int = 50, cap: int = CAP) -> ChatRequest:
    return parse_chat_request(body, max_messages=max_messages, max_tokens_cap=cap, allow_responses=allow_responses)


def base(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}
    body.update(fields)
    return body


def conversation() -> list[dict[str, Any]]:
    """The example conversation of CONTRACT.md."""
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "4 degrees, rain"}]},
    ]


def refused(body: Any, path: str, **kw: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(body, **kw)
    err = info.value
    assert str(err).startswith(f"{path}: "), f"message {str(err)!r} does not start with the path {path!r}"
    assert err.extra["param"] == path
    assert err.status == 400 and err.type == "invalid_request"
    return err


def with_message(index: int, message: Any) -> dict[str, Any]:
    msgs = conversation()
    msgs[index] = message
    return base(messages=msgs)


# --- the body and its top-level fields --------------------------------------------------------


@pytest.mark.parametrize("body", [[], "text", None, 42, [{"model": "m"}]], ids=["list", "str", "null", "int", "list-of-obj"])
def test_a_body_that_is_not_an_object_is_refused(body):
    refused(body, "body")


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(None, id="null"),
        pytest.param(5, id="int"),
        pytest.param("", id="empty"),
        pytest.param("  ", id="blank"),
        pytest.param("x" * 257, id="too-long"),
        pytest.param(["m"], id="list"),
    ],
)
def test_a_bad_model_is_refused(model):
    refused(base(model=model), "model")


def test_a_missing_model_is_refused():
    body = base()
    del body["model"]
    err = refused(body, "model")
    assert "required" in str(err)


@pytest.mark.parametrize("stream", ["yes", 1, 0, "true"])
def test_stream_must_be_a_boolean(stream):
    refused(base(stream=stream), "stream")


@pytest.mark.parametrize(
    "name, value",
    [
        ("temperature", "hot"),
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("temperature", True),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("temperature", [0.5]),
        ("top_p", 1.5),
        ("top_p", -1),
        ("top_p", "0.9"),
        ("top_k", 0),
        ("top_k", 1001),
        ("top_k", 2.5),
        ("top_k", "40"),
        ("top_k", False),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", CAP + 1),
        ("max_tokens", "100"),
        ("max_tokens", 10.5),
        ("max_new_tokens", 0),
        ("max_new_tokens", CAP + 1),
        ("seed", "1"),
        ("seed", 2**63),
        ("seed", 1.5),
    ],
)
def test_out_of_range_or_wrongly_typed_sampling_fields_are_refused(name, value):
    refused(base(**{name: value}), name)


def test_the_range_is_named_in_the_message():
    err = refused(base(temperature=3), "temperature")
    assert "between 0 and 2" in str(err)
    err = refused(base(max_tokens=CAP + 1), "max_tokens")
    assert str(CAP) in str(err)


def test_max_tokens_and_max_new_tokens_that_disagree_are_refused():
    err = refused(base(max_tokens=100, max_new_tokens=200), "max_new_tokens")
    assert "max_tokens" in str(err).split(":", 1)[1]


def test_a_bad_max_new_tokens_is_refused_even_next_to_a_good_max_tokens():
    refused(base(max_tokens=100, max_new_tokens="abc"), "max_new_tokens")
    refused(base(max_tokens=100, max_new_tokens=0), "max_new_tokens")


@pytest.mark.parametrize("name", ["temperature", "top_p"])
def test_a_huge_integer_is_refused_as_out_of_range_not_a_crash(name):
    # the stdlib JSON parser (used without the optional orjson) turns long digit strings into big ints
    refused(base(**{name: 10**400}), name)


def test_max_tokens_and_max_new_tokens_that_agree_are_accepted():
    assert parse(base(max_tokens=100, max_new_tokens=100)).max_tokens == 100


@pytest.mark.parametrize(
    "stop", [5, [""], "", ["ok", 3], {"a": "b"}, ["s"] * 17], ids=["int", "empty", "empty-string", "mixed", "dict", "too-many"]
)
def test_bad_stop_sequences_are_refused(stop):
    refused(base(stop=stop), "stop")


# --- messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [None, [], "Hello", {"role": "user"}], ids=["missing", "empty", "str", "obj"])
def test_messages_must_be_a_non_empty_list(messages):
    body = base(messages=messages)
    if messages is None:
        del body["messages"]
    refused(body, "messages")


def test_too_many_messages_are_refused():
    msgs = [{"role": "user", "content": "hi"}] * 4
    err = refused(base(messages=msgs), "messages", max_messages=3)
    assert "at most 3" in str(err)


def test_only_system_messages_are_refused():
    refused(base(messages=[{"role": "system", "content": "Be brief."}]), "messages")


@pytest.mark.parametrize("role", ["tool", "developer", "function", None, 1, "User"])
def test_a_bad_role_is_refused(role):
    refused(with_message(1, {"role": role, "content": "hi"}), "messages[1].role")


def test_a_message_that_is_not_an_object_is_refused():
    refused(with_message(2, ["assistant", "hi"]), "messages[2]")


@pytest.mark.parametrize(
    "content", ["", "   ", [], None, 42, {"type": "text", "text": "x"}], ids=["empty", "blank", "no-blocks", "null", "int", "bare-block"]
)
def test_bad_message_content_is_refused(content):
    refused(with_message(1, {"role": "user", "content": content}), "messages[1].content")


@pytest.mark.parametrize("text", ["", "  \n", None, 7], ids=["empty", "blank", "null", "int"])
def test_a_bad_text_block_names_its_path(text):
    refused(with_message(1, {"role": "user", "content": [{"type": "text", "text": text}]}), "messages[1].content[0].text")


def test_the_path_points_at_the_exact_block():
    msg = {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": ""}]}
    refused(with_message(2, msg), "messages[2].content[1].text")


@pytest.mark.parametrize("btype", ["audio", None, "TEXT"])
def test_an_unknown_block_type_is_refused(btype):
    refused(with_message(1, {"role": "user", "content": [{"type": btype, "text": "x"}]}), "messages[1].content[0].type")


def test_a_block_that_is_not_an_object_is_refused():
    refused(with_message(1, {"role": "user", "content": ["Hello"]}), "messages[1].content[0]")


def test_tool_use_in_a_user_message_is_refused():
    block = {"type": "tool_use", "id": "c", "name": "f", "arguments": {}}
    err = refused(with_message(1, {"role": "user", "content": [block]}), "messages[1].content[0]")
    assert "assistant" in str(err)


def test_tool_use_in_a_system_message_is_refused():
    block = {"type": "tool_use", "id": "c", "name": "f", "arguments": {}}
    refused(with_message(0, {"role": "system", "content": [block]}), "messages[0].content[0]")


def test_tool_result_in_an_assistant_message_is_refused():
    block = {"type": "tool_result", "tool_use_id": "call_1", "result": "x"}
    err = refused(with_message(2, {"role": "assistant", "content": [block]}), "messages[2].content[0]")
    assert "user" in str(err)


@pytest.mark.parametrize(
    "change, path",
    [
        ({"arguments": ["Oslo"]}, "messages[2].content[1].arguments"),
        ({"arguments": '{"city": "Oslo"}'}, "messages[2].content[1].arguments"),
        ({"id": None}, "messages[2].content[1].id"),
        ({"id": ""}, "messages[2].content[1].id"),
        ({"name": 3}, "messages[2].content[1].name"),
        ({"name": "f" * 257}, "messages[2].content[1].name"),
    ],
)
def test_bad_tool_use_fields_name_their_path(change, path):
    msgs = conversation()
    msgs[2]["content"][1].update(change)
    refused(base(messages=msgs), path)


@pytest.mark.parametrize(
    "change, path",
    [
        ({"tool_use_id": None}, "messages[3].content[0].tool_use_id"),
        ({"tool_use_id": ""}, "messages[3].content[0].tool_use_id"),
        ({"is_error": "yes"}, "messages[3].content[0].is_error"),
    ],
)
def test_bad_tool_result_fields_name_their_path(change, path):
    msgs = conversation()
    msgs[3]["content"][0].update(change)
    refused(base(messages=msgs), path)


# --- tools and tool_choice ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tools, path",
    [
        ("get_weather", "tools"),
        ({"name": "f"}, "tools"),
        ([{"name": "f"}] * 129, "tools"),
        ([5], "tools[0]"),
        ([{"name": "ok"}, {"description": "no name"}], "tools[1].name"),
        ([{"name": ""}], "tools[0].name"),
        ([{"name": "f", "parameters": "object"}], "tools[0].parameters"),
        ([{"name": "f", "description": 5}], "tools[0].description"),
        ([{"type": "function", "function": {"name": 5}}], "tools[0].function.name"),
    ],
)
def test_bad_tools_name_their_path(tools, path):
    refused(base(tools=tools), path)


@pytest.mark.parametrize("choice", ["sometimes", 1, {"name": ""}, {"type": "function"}, {"function": {"name": 3}}, ["auto"]])
def test_a_bad_tool_choice_is_refused(choice):
    refused(base(tool_choice=choice), "tool_choice")


@pytest.mark.parametrize("tools", [None, []], ids=["no-tools", "empty-tools"])
@pytest.mark.parametrize("choice", ["required", "any", {"name": "f"}])
def test_a_tool_choice_that_needs_tools_without_them_is_refused(choice, tools):
    # both APIs answer 400 ("'tool_choice' is only allowed when 'tools' are specified")
    body = base(tool_choice=choice) if tools is None else base(tools=tools, tool_choice=choice)
    err = refused(body, "tool_choice")
    assert "tools" in str(err).split(":", 1)[1]


@pytest.mark.parametrize("tools", [None, []], ids=["no-tools", "empty-tools"])
@pytest.mark.parametrize("choice", ["auto", "none"])
def test_auto_or_none_without_tools_asks_for_nothing_and_is_dropped(choice, tools):
    """A client may send them with ``tools: []``; the upstream would refuse them, so they go."""
    body = base(tool_choice=choice) if tools is None else base(tools=tools, tool_choice=choice)
    assert parse(body).tool_choice is None


@pytest.mark.parametrize(
    "choice",
    [{"name": "nope"}, {"type": "tool", "name": "nope"}, {"type": "function", "function": {"name": "nope"}}],
    ids=["neutral", "anthropic", "openai"],
)
def test_tool_choice_naming_a_tool_not_in_tools_is_refused(choice):
    err = refused(base(tools=[{"name": "a"}, {"name": "b"}], tool_choice=choice), "tool_choice")
    assert "'nope'" in str(err)


@pytest.mark.parametrize(
    "tools, path",
    [
        ([{"name": "a"}, {"name": "a"}], "tools[1].name"),
        ([{"name": "a"}, {"type": "function", "function": {"name": "a"}}], "tools[1].function.name"),
    ],
    ids=["same-shape", "neutral-and-openai-wrapper"],
)
def test_duplicate_tool_names_are_refused(tools, path):
    err = refused(base(tools=tools), path)
    assert "'a'" in str(err) and "tools[0]" in str(err)


def test_a_tool_name_that_appears_once_among_others_is_accepted():
    assert [t["name"] for t in parse(base(tools=[{"name": "a"}, {"name": "b"}, {"name": "A"}])).tools] == ["a", "b", "A"]


def test_tool_choice_naming_a_tool_in_tools_is_accepted_in_every_shape():
    tools = [{"name": "a"}, {"type": "function", "function": {"name": "b"}}]
    for choice in ({"name": "b"}, {"type": "tool", "name": "a"}, {"type": "function", "function": {"name": "b"}}):
        assert parse(base(tools=tools, tool_choice=choice)).tool_choice == {"name": choice.get("name") or choice["function"]["name"]}


# --- tool_use and tool_result pair up -----------------------------------------------------------


@pytest.mark.parametrize(
    "next_message",
    [
        {"role": "user", "content": "no result"},
        {"role": "user", "content": [{"type": "text", "text": "no result"}]},
        {"role": "assistant", "content": "talking on"},
    ],
    ids=["user-string", "user-text-block", "assistant"],
)
def test_a_tool_use_not_answered_in_the_next_message_is_refused(next_message):
    msgs = conversation()
    msgs[3] = next_message
    err = refused(base(messages=msgs), "messages[2].content[1].id")
    assert "'call_1'" in str(err) and "tool_result" in str(err)


def test_a_tool_use_in_the_last_message_is_refused():
    msgs = conversation()[:3]
    refused(base(messages=msgs), "messages[2].content[1].id")


def test_a_parallel_tool_use_left_unanswered_is_refused():
    msgs = conversation()
    msgs[2]["content"].append({"type": "tool_use", "id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}})
    err = refused(base(messages=msgs), "messages[2].content[2].id")
    assert "'call_2'" in str(err)


@pytest.mark.parametrize(
    "messages, path",
    [
        (  # an id no tool_use has
            conversation()[:3]
            + [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "result": "ok"},
                        {"type": "tool_result", "tool_use_id": "zz", "result": "r"},
                    ],
                }
            ],
            "messages[3].content[1].tool_use_id",
        ),
        (  # no assistant message before it at all
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "zz", "result": "r"}]}],
            "messages[0].content[0].tool_use_id",
        ),
        (  # a tool_use of an older assistant turn
            conversation()
            + [
                {"role": "assistant", "content": "It rains."},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "again"}]},
            ],
            "messages[5].content[0].tool_use_id",
        ),
        (  # a user message in between
            conversation()[:3]
            + [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "ok"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "twice"}]},
            ],
            "messages[4].content[0].tool_use_id",
        ),
    ],
    ids=["unknown-id", "no-assistant-before", "older-turn", "answered-already"],
)
def test_a_tool_result_answering_no_tool_use_of_the_previous_assistant_message_is_refused(messages, path):
    err = refused(base(messages=messages), path)
    assert "tool_use" in str(err).split(":", 1)[1]


def test_a_tool_use_answered_twice_in_one_message_is_refused():
    msgs = conversation()
    msgs[3]["content"].append({"type": "tool_result", "tool_use_id": "call_1", "result": "again"})
    err = refused(base(messages=msgs), "messages[3].content[1].tool_use_id")
    assert "earlier tool_result" in str(err)


def test_parallel_tool_uses_answered_by_several_tool_results_are_accepted():
    msgs = conversation()
    msgs[2]["content"].append({"type": "tool_use", "id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}})
    msgs[3]["content"].insert(0, {"type": "tool_result", "tool_use_id": "call_2", "result": "sun"})  # any order
    req = parse(base(messages=msgs))
    assert [b["tool_use_id"] for b in req.messages[3]["content"]] == ["call_2", "call_1"]


def test_tool_results_followed_by_text_blocks_are_accepted():
    msgs = conversation()
    msgs[3]["content"].append({"type": "text", "text": "Also, what should I wear?"})
    assert [b["type"] for b in parse(base(messages=msgs)).messages[3]["content"]] == ["tool_result", "text"]


def test_a_conversation_that_goes_on_after_a_tool_round_is_accepted():
    msgs = conversation() + [
        {"role": "assistant", "content": "It rains in Oslo."},
        {"role": "user", "content": "And Bergen?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Bergen"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_2", "content": "sun"}]},
    ]
    assert len(parse(base(messages=msgs)).messages) == 8


def test_parallel_tool_results_become_several_openai_tool_messages_after_the_tool_calls():
    from flask_llm_proxy.providers.openai import _messages as openai_messages

    msgs = conversation()
    msgs[2]["content"].append({"type": "tool_use", "id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}})
    msgs[3]["content"].append({"type": "tool_result", "tool_use_id": "call_2", "result": "sun"})
    out = openai_messages(parse(base(messages=msgs)))
    assert [c["id"] for c in out[2]["tool_calls"]] == ["call_1", "call_2"]
    assert [(m["role"], m.get("tool_call_id")) for m in out[3:]] == [("tool", "call_1"), ("tool", "call_2")]


def test_an_openai_style_tool_message_is_refused_by_its_role():
    # the neutral form carries tool results as tool_result blocks of a user message
    msgs = conversation()[:3] + [{"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"}]
    refused(base(messages=msgs), "messages[3].role")


# --- the Responses form ---------------------------------------------------------------------


def test_the_responses_form_is_refused_where_it_is_not_allowed():
    err = refused({"model": "m", "input": "Hello"}, "input", allow_responses=False)
    assert "messages" in str(err)


@pytest.mark.parametrize(
    "fields, path",
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": [5]}, "input[0]"),
        ({"input": [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}]}, "input[1].role"),
        ({"input": [{"content": "no role, no type"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": "hi", "instructions": 5}, "instructions"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "max_output_tokens": 10, "max_tokens": 20}, "max_tokens"),
        ({"input": "hi", "temperature": 2.5}, "temperature"),
        ({"input": "hi", "top_p": -0.5}, "top_p"),
        ({"input": "hi", "tools": "x"}, "tools"),
        ({"input": "hi", "tools": [{"name": "no type"}]}, "tools"),
        ({"input": "hi", "tool_choice": "any"}, "tool_choice"),
        ({"input": "hi", "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"input": "hi", "store": 1}, "store"),
        ({"input": "hi", "reasoning": "high"}, "reasoning"),
        ({"input": "hi", "text": "plain"}, "text"),
        ({"input": "hi", "truncation": "sometimes"}, "truncation"),
    ],
)
def test_bad_responses_fields_name_their_path(fields, path):
    refused({"model": "gpt-4o", **fields}, path, allow_responses=True)


def test_too_many_responses_input_items_are_refused():
    items = [{"role": "user", "content": "x"}] * 4
    refused({"model": "m", "input": items}, "input", allow_responses=True, max_messages=3)


def test_the_responses_form_forwards_its_known_fields():
    body = {
        "model": "gpt-4o",
        "input": [{"role": "user", "content": "Hi"}, {"type": "function_call_output", "call_id": "c", "output": "x"}],
        "instructions": "Be brief.",
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [{"type": "web_search"}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low"},
        "text": {"format": {"type": "text"}},
        "store": False,
        "truncation": "auto",
        "stream": False,
    }
    req = parse(body, allow_responses=True)
    assert req.responses_body == {k: v for k, v in body.items() if k not in ("model", "stream")}  # every other field, as sent
    assert req.model == "gpt-4o" and req.stream is False and req.max_tokens == 64
    assert req.messages == []


def test_max_new_tokens_in_the_responses_form_becomes_max_output_tokens():
    req = parse({"model": "m", "input": "Hi", "max_new_tokens": 32}, allow_responses=True)
    assert req.responses_body == {"input": "Hi", "max_output_tokens": 32}
    assert req.max_tokens == 32


@pytest.mark.parametrize("field", ["previous_response_id", "user", "metadata", "background", "stop", "seed", "top_k"])
def test_a_field_the_responses_form_does_not_take_is_refused_by_name(field):
    refused({"model": "gpt-4o", "input": "Hi", field: "x"}, field, allow_responses=True)


def test_a_body_with_messages_and_input_is_refused_naming_input():
    err = refused(base(input="ignored"), "input", allow_responses=True)
    assert "'messages' or 'input'" in str(err)


# --- valid bodies and their normal form -----------------------------------------------------


def test_the_contract_example_is_accepted_and_normalised():
    body = base(
        messages=conversation(),
        max_tokens=100,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        stop=["END"],
        seed=1,
        tools=[
            {
                "name": "get_weather",
                "description": "...",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }
        ],
        tool_choice="auto",
        stream=True,
    )
    original = copy.deepcopy(body)
    req = parse(body)
    assert body == original, "parsing must not modify the caller's body"
    assert req.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "4 degrees, rain", "is_error": False}]},
    ]
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stop, req.seed) == (100, 0.7, 0.9, 40, ["END"], 1)
    assert req.tools == [{"name": "get_weather", "description": "...", "parameters": body["tools"][0]["parameters"]}]
    assert req.tool_choice == "auto" and req.stream is True and req.responses_body is None


def test_max_new_tokens_becomes_max_tokens():
    assert parse(base(max_new_tokens=50)).max_tokens == 50


def test_max_tokens_is_none_when_not_sent():
    assert parse(base()).max_tokens is None


def test_max_tokens_equal_to_the_cap_is_accepted():
    assert parse(base(max_tokens=CAP)).max_tokens == CAP


def test_whitespace_stop_sequences_are_valid_in_the_neutral_request():
    """OpenAI takes them, and "\\n\\n" is one of its most common uses; Anthropic's adapter refuses
    them (tests/test_translation.py)."""
    assert parse(base(stop=["\n\n", " "])).stop == ["\n\n", " "]


def test_a_stop_string_becomes_a_list():
    assert parse(base(stop="END")).stop == ["END"]


def test_stop_sequences_is_accepted_as_a_synonym_of_stop():
    assert parse(base(stop_sequences=["A", "B"])).stop == ["A", "B"]


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("any", "required"),
        ("required", "required"),
        ("auto", "auto"),
        ("none", "none"),
        ({"name": "f"}, {"name": "f"}),
        ({"type": "tool", "name": "f"}, {"name": "f"}),
        ({"type": "function", "function": {"name": "f"}}, {"name": "f"}),
    ],
)
def test_tool_choice_is_normalised(choice, expected):
    assert parse(base(tools=[{"name": "f"}], tool_choice=choice)).tool_choice == expected


def test_openai_style_tool_wrapper_is_accepted():
    params = {"type": "object", "properties": {"q": {"type": "string"}}}
    req = parse(base(tools=[{"type": "function", "function": {"name": "search", "description": "Find", "parameters": params}}]))
    assert req.tools == [{"name": "search", "description": "Find", "parameters": params}]


def test_anthropic_style_input_schema_is_accepted():
    schema = {"type": "object", "properties": {}}
    assert parse(base(tools=[{"name": "f", "input_schema": schema}])).tools == [{"name": "f", "description": None, "parameters": schema}]


def test_a_tool_without_parameters_gets_an_empty_object_schema():
    assert parse(base(tools=[{"name": "f"}])).tools == [
        {"name": "f", "description": None, "parameters": {"type": "object", "properties": {}}}
    ]


def test_tool_use_input_is_accepted_as_a_synonym_of_arguments():
    msgs = conversation()
    block = msgs[2]["content"][1]
    block["input"] = block.pop("arguments")
    req = parse(base(messages=msgs))
    assert req.messages[2]["content"][1]["arguments"] == {"city": "Oslo"}


def test_tool_use_without_arguments_gets_an_empty_object():
    msgs = conversation()
    del msgs[2]["content"][1]["arguments"]
    assert parse(base(messages=msgs)).messages[2]["content"][1]["arguments"] == {}


@pytest.mark.parametrize(
    "result, expected",
    [("plain", "plain"), ({"temp": 4}, '{"temp":4}'), ([1, 2], "[1,2]"), (4, "4"), (None, "null")],
)
def test_a_tool_result_is_kept_as_a_string(result, expected):
    msgs = conversation()
    msgs[3]["content"][0]["result"] = result
    assert parse(base(messages=msgs)).messages[3]["content"][0]["result"] == expected


def test_tool_result_content_is_accepted_as_a_synonym_of_result():
    msgs = conversation()
    block = msgs[3]["content"][0]
    block["content"] = block.pop("result")
    block["is_error"] = True
    out = parse(base(messages=msgs)).messages[3]["content"][0]
    assert out["result"] == "4 degrees, rain" and out["is_error"] is True


@pytest.mark.parametrize("field", ["user", "logprobs", "api_key", "metadata", "n", "service_tier", "instructions"])
def test_an_unknown_top_level_field_is_refused_by_name(field):
    err = refused(base(**{field: "x"}), field)
    assert "known:" in str(err) and "messages" in str(err)


@pytest.mark.parametrize("key", ["name", "cache_control", "tool_calls", "id"])
def test_an_unknown_key_of_a_message_is_refused_by_path(key):
    body = base()
    body["messages"][0][key] = "alice"
    refused(body, f"messages[0].{key}")


def test_an_unknown_key_inside_a_block_is_refused_by_path():
    msg = {"role": "user", "content": [{"type": "text", "text": "hi", "citations": []}]}
    refused(base(messages=[msg]), "messages[0].content[0].citations")


def test_cache_control_on_a_block_is_kept_for_the_provider():
    msg = {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    assert parse(base(messages=[msg])).messages == [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    ]
    msg["content"][0]["cache_control"] = {"type": "persistent"}
    refused(base(messages=[msg]), "messages[0].content[0].cache_control")


@pytest.mark.parametrize("stream, expected", [(None, True), (True, True), (False, False)])
def test_stream_defaults_to_true(stream, expected):
    body = base() if stream is None else base(stream=stream)
    assert parse(body).stream is expected


def test_numbers_are_normalised_to_their_types():
    req = parse(base(temperature=1, top_k=40.0, max_tokens=64.0))
    assert req.temperature == 1.0 and isinstance(req.temperature, float)
    assert req.top_k == 40 and isinstance(req.top_k, int)
    assert req.max_tokens == 64 and isinstance(req.max_tokens, int)


def test_boundary_values_are_accepted():
    req = parse(base(temperature=0, top_p=1, top_k=1000, seed=-(2**63)))
    assert (req.temperature, req.top_p, req.top_k, req.seed) == (0.0, 1.0, 1000, -(2**63))


def test_an_assistant_message_may_hold_only_a_tool_use():
    msgs = conversation()
    msgs[2]["content"] = msgs[2]["content"][1:]
    assert parse(base(messages=msgs)).messages[2]["content"][0]["type"] == "tool_use"


def test_text_for_log_joins_the_text_of_every_message():
    req = parse(base(messages=conversation()))
    assert req.text_for_log() == "Be brief.\nHello\nLet me look."


@pytest.mark.parametrize("model", ["claude-x\n", "claude x", "claude-\u200bx", "\tgpt-4o"])
def test_a_model_name_with_invisible_characters_is_refused(model: str) -> None:
    """An allow-list pattern like ``claude-*`` matches any tail, line breaks included."""
    refused({"model": model, "messages": [{"role": "user", "content": "hi"}]}, "model")


def test_parallel_tool_results_in_consecutive_user_messages_answer_one_assistant_turn():
    """OpenAI's one ``tool`` message per call arrives as one user message per tool_result."""
    msgs = conversation()[:3]
    msgs[2]["content"].append({"type": "tool_use", "id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}})
    msgs += [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_2", "result": "sun"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "result": "rain"}]},
    ]
    assert [m["role"] for m in parse(base(messages=msgs)).messages][-2:] == ["user", "user"]
