"""The official Anthropic and OpenAI Python SDKs, unchanged, through the native-format endpoints.

The JWT is the SDK's credential (``api_key=`` / ``auth_token=``); the provider key stays on the
server. Streaming and not, text and tool calls, and the SDK's own exception classes for errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from conftest import API_KEY, make_jwt
from fake_upstream import expected_text

SONNET = "claude-3-5-sonnet-20241022"
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def sdk_proxy(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from conftest import GunicornServer, base_env

    env = base_env(upstream.base_url, tmp_path_factory.mktemp("sdk"), LLM_PROXY_REQUIRE_AUTH=True, LLM_PROXY_RATE_LIMIT="3/minute")
    server = GunicornServer(env, workers=1)  # memory:// rate-limit storage is per process
    yield server
    server.stop()


def claude(proxy: Any, user: str = "sdk-user", **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", make_jwt(user))
    return anthropic.Anthropic(base_url=f"{proxy.url}/api/anthropic", max_retries=0, timeout=20, **kw)


def gpt(proxy: Any, user: str = "sdk-user") -> openai.OpenAI:
    return openai.OpenAI(api_key=make_jwt(user), base_url=f"{proxy.url}/api/openai/v1", max_retries=0, timeout=20)


def test_anthropic_messages_create(sdk_proxy: Any, upstream: Any) -> None:
    msg = claude(sdk_proxy, "a1").messages.create(
        model=SONNET, max_tokens=50, messages=[{"role": "user", "content": "id=sdk-create tokens=6 input_tokens=12"}]
    )
    assert msg.content[0].text == expected_text(6)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (12, 6)
    rec = upstream.requests(id="sdk-create")[0]
    assert rec["headers"]["x-api-key"] == API_KEY  # the server's key upstream, never the client's JWT
    assert "authorization" not in rec["headers"]


def test_anthropic_messages_stream_text_and_tool_call(sdk_proxy: Any) -> None:
    client = claude(sdk_proxy, "a2")
    with client.messages.stream(model=SONNET, max_tokens=50, messages=[{"role": "user", "content": "tokens=9 split=5"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == expected_text(9)
    with client.messages.stream(
        model=SONNET, max_tokens=50, tools=[WEATHER_TOOL_ANTHROPIC], messages=[{"role": "user", "content": "tokens=1 tool=1"}]
    ) as stream:
        final = stream.get_final_message()
    tool = [b for b in final.content if b.type == "tool_use"][0]
    assert (tool.name, tool.input) == ("get_weather", {"city": "Oslo", "unit": "celsius"})
    assert final.stop_reason == "tool_use"


def test_anthropic_auth_token_sends_the_jwt_as_bearer(sdk_proxy: Any) -> None:
    client = anthropic.Anthropic(auth_token=make_jwt("a3"), base_url=f"{sdk_proxy.url}/api/anthropic", max_retries=0, timeout=20)
    msg = client.messages.create(model=SONNET, max_tokens=20, messages=[{"role": "user", "content": "tokens=2"}])
    assert msg.content[0].text == expected_text(2)


def test_openai_chat_completions_with_and_without_streaming(sdk_proxy: Any, upstream: Any) -> None:
    client = gpt(sdk_proxy, "o1")
    done = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "id=sdk-chat tokens=5"}])
    assert done.choices[0].message.content == expected_text(5)
    assert upstream.requests(id="sdk-chat")[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
    chunks = list(client.chat.completions.create(model="gpt-4o", stream=True, messages=[{"role": "user", "content": "tokens=7 split=9"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(7)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_openai_tool_calls_with_and_without_streaming(sdk_proxy: Any) -> None:
    import json

    client = gpt(sdk_proxy, "o2")
    done = client.chat.completions.create(
        model="gpt-4o", tools=[WEATHER_TOOL_OPENAI], messages=[{"role": "user", "content": "tokens=1 tool=1"}]
    )
    call = done.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo", "unit": "celsius"}
    args = ""
    for chunk in client.chat.completions.create(
        model="gpt-4o", stream=True, tools=[WEATHER_TOOL_OPENAI], messages=[{"role": "user", "content": "tokens=1 tool=1"}]
    ):
        for c in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            args += c.function.arguments or ""
    assert json.loads(args) == {"city": "Oslo", "unit": "celsius"}


def test_openai_responses_streaming(sdk_proxy: Any) -> None:
    client = gpt(sdk_proxy, "o3")
    events = list(client.responses.create(model="gpt-4o", input="tokens=6 split=7", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected_text(6)
    assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == 6


def test_disallowed_model_raises_the_sdks_bad_request_error(sdk_proxy: Any, upstream: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as a:
        claude(sdk_proxy, "e1").messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "id=sdk-bad"}])
    assert "not allowed" in str(a.value)
    with pytest.raises(openai.BadRequestError):
        gpt(sdk_proxy, "e1").chat.completions.create(
            model="claude-3-5-sonnet-20241022", messages=[{"role": "user", "content": "id=sdk-bad"}]
        )
    assert upstream.requests(id="sdk-bad") == []


def test_a_model_name_with_a_line_break_is_a_bad_request_before_any_upstream_call(sdk_proxy: Any, upstream: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as a:  # "claude-*" would match it
        claude(sdk_proxy, "e1").messages.create(
            model="claude-3-5-sonnet\n", max_tokens=5, messages=[{"role": "user", "content": "id=sdk-nl"}]
        )
    assert "model" in str(a.value)
    assert upstream.requests(id="sdk-nl") == []


def test_rate_limit_raises_the_sdks_rate_limit_error(sdk_proxy: Any) -> None:
    client = gpt(sdk_proxy, "limited-user")
    for _ in range(3):  # LLM_PROXY_RATE_LIMIT = 3/minute in this fixture
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "tokens=1"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "tokens=1"}])
    with pytest.raises(anthropic.RateLimitError):
        claude(sdk_proxy, "limited-user").messages.create(model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "tokens=1"}])


def test_a_bad_jwt_raises_the_sdks_authentication_error(sdk_proxy: Any) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        claude(sdk_proxy, api_key="not-a-jwt").messages.create(model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            api_key=make_jwt("x", secret="wrong-secret-wrong-secret-wrong-secret"),
            base_url=f"{sdk_proxy.url}/api/openai/v1",
            max_retries=0,
            timeout=20,
        ).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_upstream_failure_raises_the_sdks_server_error_without_retry_storm(sdk_proxy: Any, upstream: Any) -> None:
    client = anthropic.Anthropic(api_key=make_jwt("e3"), base_url=f"{sdk_proxy.url}/api/anthropic", max_retries=2, timeout=20)
    with pytest.raises(anthropic.InternalServerError) as exc:
        client.messages.create(
            model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "id=sdk-500 status=500,500,500,500,500,500"}]
        )
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests(id="sdk-500")) == 3  # the proxy's 3 attempts; the SDK did not multiply them
