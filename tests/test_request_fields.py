"""No field is dropped silently: every field the contract endpoint accepts reaches the upstream
body (translated into the target API's own field where the names differ), is refused with a 400
naming it where the target API does not take it, or is the proxy's own (and then shows in the
answer, never in the upstream body).

The tables below must list exactly the fields the parser accepts (``FIELDS`` of
``contract/request.py`` and ``contract/responses_form.py``): a new field without a row fails
``test_every_accepted_field_has_a_row``. docs/multimodal.rst has the same table for users.
The shared ``proxy`` reaches the fake upstream as an OpenAI-compatible server (not OpenAI's own
URL), which takes ``top_k`` and ``repetition_penalty``; OpenAI's own API refusing them is in
test_translation.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import chat_body, http, sse_events, uid

from flask_llm_proxy.contract import request, responses_form

SONNET = "claude-sonnet-4-5"
TOOLS = [{"name": "lookup", "description": "Look it up.", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
REFUSED = "refused"  # a 400 naming the field, no upstream call

# field -> (the body's extra fields, {api: check of the upstream body, or REFUSED});
# a check of None marks a field of the proxy's own: its effect is checked on the answer (own_effect)
MESSAGES_FORM: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "model": ({}, {"anthropic": lambda b: b["model"] == SONNET, "openai": lambda b: b["model"] == "gpt-4o"}),
    "messages": (
        {},
        {"anthropic": lambda b: "tokens=1" in b["messages"][0]["content"], "openai": lambda b: "tokens=1" in b["messages"][0]["content"]},
    ),
    "max_tokens": ({"max_tokens": 77}, {"anthropic": lambda b: b["max_tokens"] == 77, "openai": lambda b: b["max_tokens"] == 77}),
    "max_new_tokens": ({"max_new_tokens": 66}, {"anthropic": lambda b: b["max_tokens"] == 66, "openai": lambda b: b["max_tokens"] == 66}),
    "temperature": ({"temperature": 0.5}, {"anthropic": lambda b: b["temperature"] == 0.5, "openai": lambda b: b["temperature"] == 0.5}),
    "top_p": ({"top_p": 0.9}, {"anthropic": lambda b: b["top_p"] == 0.9, "openai": lambda b: b["top_p"] == 0.9}),
    "top_k": ({"top_k": 40}, {"anthropic": lambda b: b["top_k"] == 40, "openai": lambda b: b["top_k"] == 40}),
    "stop": ({"stop": ["END"]}, {"anthropic": lambda b: b["stop_sequences"] == ["END"], "openai": lambda b: b["stop"] == ["END"]}),
    "stop_sequences": (
        {"stop_sequences": ["END"]},
        {"anthropic": lambda b: b["stop_sequences"] == ["END"], "openai": lambda b: b["stop"] == ["END"]},
    ),
    "seed": ({"seed": 7}, {"anthropic": REFUSED, "openai": lambda b: b["seed"] == 7}),
    "tools": (
        {"tools": TOOLS},
        {
            "anthropic": lambda b: b["tools"] == [{"name": "lookup", "description": "Look it up.", "input_schema": TOOLS[0]["parameters"]}],
            "openai": lambda b: b["tools"] == [{"type": "function", "function": TOOLS[0]}],
        },
    ),
    "tool_choice": (
        {"tools": TOOLS, "tool_choice": {"name": "lookup"}},
        {
            "anthropic": lambda b: b["tool_choice"] == {"type": "tool", "name": "lookup"},
            "openai": lambda b: b["tool_choice"] == {"type": "function", "function": {"name": "lookup"}},
        },
    ),
    "parallel_tool_calls": (
        {"tools": TOOLS, "parallel_tool_calls": False},
        {
            "anthropic": lambda b: b["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True},
            "openai": lambda b: b["parallel_tool_calls"] is False,
        },
    ),
    "presence_penalty": ({"presence_penalty": 0.5}, {"anthropic": REFUSED, "openai": lambda b: b["presence_penalty"] == 0.5}),
    "frequency_penalty": ({"frequency_penalty": 0.5}, {"anthropic": REFUSED, "openai": lambda b: b["frequency_penalty"] == 0.5}),
    "repetition_penalty": ({"repetition_penalty": 1.1}, {"anthropic": REFUSED, "openai": lambda b: b["repetition_penalty"] == 1.1}),
    "thinking": (
        {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
        {"anthropic": lambda b: b["thinking"] == {"type": "enabled", "budget_tokens": 1024}, "openai": REFUSED},
    ),
    "reasoning_effort": ({"reasoning_effort": "low"}, {"anthropic": REFUSED, "openai": lambda b: b["reasoning_effort"] == "low"}),
    "response_format": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
        {
            "anthropic": lambda b: b["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}},
            "openai": lambda b: b["response_format"] == {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
        },
    ),
    "stream": ({"stream": False}, {"anthropic": None, "openai": None}),
    "include_reasoning": ({"include_reasoning": True}, {"anthropic": None, "openai": None}),
    "enable_thinking": ({"enable_thinking": False}, {"anthropic": None, "openai": None}),
    "deterministic": ({"deterministic": False}, {"anthropic": None, "openai": None}),
}
RESPONSES_FORM: dict[str, tuple[dict[str, Any], Any]] = {
    "model": ({}, lambda b: b["model"] == "gpt-4o"),
    "input": ({}, lambda b: "tokens=1" in b["input"]),
    "instructions": ({"instructions": "Be brief."}, lambda b: b["instructions"] == "Be brief."),
    "max_output_tokens": ({"max_output_tokens": 55}, lambda b: b["max_output_tokens"] == 55),
    "max_tokens": ({"max_tokens": 44}, lambda b: b["max_output_tokens"] == 44),
    "max_new_tokens": ({"max_new_tokens": 33}, lambda b: b["max_output_tokens"] == 33),
    "temperature": ({"temperature": 0.5}, lambda b: b["temperature"] == 0.5),
    "top_p": ({"top_p": 0.9}, lambda b: b["top_p"] == 0.9),
    "tools": ({"tools": [{"type": "web_search"}]}, lambda b: b["tools"] == [{"type": "web_search"}]),
    "tool_choice": ({"tool_choice": "required"}, lambda b: b["tool_choice"] == "required"),
    "parallel_tool_calls": ({"parallel_tool_calls": False}, lambda b: b["parallel_tool_calls"] is False),
    "reasoning": ({"reasoning": {"effort": "low", "summary": "auto"}}, lambda b: b["reasoning"] == {"effort": "low", "summary": "auto"}),
    "text": ({"text": {"verbosity": "low"}}, lambda b: b["text"] == {"verbosity": "low"}),
    "store": ({"store": False}, lambda b: b["store"] is False),
    "truncation": ({"truncation": "auto"}, lambda b: b["truncation"] == "auto"),
    "response_format": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}},
        lambda b: b["text"] == {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA, "strict": True}},
    ),
    "stream": ({"stream": False}, None),
    "include_reasoning": ({"include_reasoning": True}, None),
    "enable_thinking": ({"enable_thinking": False}, None),
    "deterministic": ({"deterministic": False}, None),
}


def test_every_accepted_field_has_a_row() -> None:
    assert set(MESSAGES_FORM) == set(request.FIELDS)
    assert set(RESPONSES_FORM) == set(responses_form.FIELDS)


def send(proxy: Any, provider: str, body: dict[str, Any]) -> tuple[int, Any]:
    with http().post(f"{proxy.url}/api/{provider}", json=body, stream=True, timeout=30) as r:
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            return r.status_code, sse_events(r)
        return r.status_code, json.loads(r.raw.read())


def own_effect(field: str, answer: Any) -> None:
    """What the proxy's own fields do: in the answer, nothing in the upstream body."""
    if field == "stream":
        assert isinstance(answer, dict) and "content" in answer
    elif field == "include_reasoning":
        assert answer[-2]["isLast"] and "reasoningTokens" in answer[-2]["usage"]
    else:  # agentary-js's flags when false: a normal answer
        assert answer[-1] == "[DONE]"


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("field", sorted(MESSAGES_FORM))
def test_each_field_of_the_messages_form_reaches_the_upstream_or_is_refused_by_name(
    proxy: Any, upstream: Any, field: str, provider: str
) -> None:
    extra, checks = MESSAGES_FORM[field]
    check = checks[provider]
    rid = uid(f"field-{field}")
    model = SONNET if provider == "anthropic" else "gpt-4o"
    body = chat_body(f"id={rid} tokens=1", model=model, **extra)
    if "max_new_tokens" in extra:
        del body["max_tokens"]
    status, answer = send(proxy, provider, body)
    if check == REFUSED:
        assert status == 400 and answer["error"].startswith(f"{field}: "), answer
        assert upstream.requests(id=rid) == []
        return
    assert status == 200, answer
    sent = upstream.requests(id=rid)[0]["body"]
    if check is None:
        own_effect(field, answer)
        assert field not in sent or (field == "stream" and sent["stream"] is True)
    else:
        assert check(sent), (field, sent)


@pytest.mark.parametrize("field", sorted(RESPONSES_FORM))
def test_each_field_of_the_responses_form_reaches_the_upstream(proxy: Any, upstream: Any, field: str) -> None:
    extra, check = RESPONSES_FORM[field]
    rid = uid(f"rfield-{field}")
    status, answer = send(proxy, "openai", {"model": "gpt-4o", "input": f"id={rid} tokens=1", **extra})
    assert status == 200, answer
    sent = upstream.requests(id=rid)[0]
    assert sent["path"] == "/v1/responses"
    if check is None:
        own_effect(field, answer)
        assert field not in sent["body"] or (field == "stream" and sent["body"]["stream"] is True)
    else:
        assert check(sent["body"]), (field, sent["body"])


def test_what_agentary_js_sends_by_default_is_accepted(proxy: Any, upstream: Any) -> None:
    """Its workflow steps send enable_thinking: false, a temperature, max_new_tokens and stream:
    false (tools force it); modelProvider 'openai' sends the same in the Responses form."""
    rid = uid("agentary")
    body = {
        "model": SONNET,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"id={rid} tokens=2"}],
        "enable_thinking": False,
        "temperature": 0.1,
        "max_new_tokens": 1024,
        "stream": False,
        "tools": TOOLS,
    }
    status, answer = send(proxy, "anthropic", body)
    assert status == 200 and answer["content"], answer
    assert "enable_thinking" not in upstream.requests(id=rid)[0]["body"]
    rid = uid("agentary-oa")
    body = {
        "model": "gpt-4o",
        "input": [{"type": "message", "role": "user", "content": f"id={rid} tokens=2"}],
        "enable_thinking": False,
        "temperature": 0.1,
        "stream": False,
        "max_output_tokens": 1024,
    }
    status, answer = send(proxy, "openai", body)
    assert status == 200 and answer["content"], answer


@pytest.mark.parametrize("field, value", [("enable_thinking", True), ("deterministic", True)])
def test_agentary_js_flags_asking_for_what_no_cloud_api_does_are_refused(proxy: Any, upstream: Any, field: str, value: Any) -> None:
    rid = uid("agentary-flag")
    status, answer = send(proxy, "anthropic", chat_body(f"id={rid}", model=SONNET, **{field: value}))
    assert status == 400 and answer["error"].startswith(f"{field}: ")
    assert upstream.requests(id=rid) == []
