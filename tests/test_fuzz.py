"""Fuzzing the client side (issue 3): whatever a client sends, the answer is 2xx or a contract 4xx.

In-process Flask test client; the providers point at a port where nothing listens and the
``responses`` library answers for it, recording every upstream call (so no network is used, and
an unexpected upstream URL would surface as a 502 and fail the test). Properties, per example:

* never a 5xx;
* every 4xx has a JSON body with ``error`` and ``type`` (the native SDK endpoints: the provider's
  own error shape);
* whenever the answer is 4xx, the upstream was not called.

Deeply nested JSON (deeper than orjson serializes, 255 levels) has its own test at the end: a 400
that names the depth limit, before any upstream call; the general strategies stay below that depth
so they keep guarding everything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
import responses
from conftest import API_KEY, JWT_SECRET
from flask import Flask
from flask_jwt_extended import JWTManager
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flask_llm_proxy import LLMProxy
from flask_llm_proxy.web.json_body import MAX_DEPTH

UPSTREAM = "http://127.0.0.1:9"  # the discard port: nothing listens; `responses` answers instead
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
)

ANTHROPIC_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":1}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
CHAT_SSE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
    b"data: [DONE]\n\n"
)
RESPONSES_SSE = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"r1","status":"in_progress"}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r1","status":"completed","usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
)
STREAMS = {"/v1/messages": ANTHROPIC_SSE, "/v1/chat/completions": CHAT_SSE, "/v1/responses": RESPONSES_SSE}
WHOLE = {
    "/v1/messages": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hi"}],
        "model": "m",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    },
    "/v1/chat/completions": {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    },
    "/v1/responses": {"id": "r1", "status": "completed", "output": [], "usage": {"input_tokens": 3, "output_tokens": 1}},
}


# --- the app and the recorded upstream ----------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_calls() -> Iterator[list[str]]:
    """Every upstream call the proxy makes, answered by `responses` with a well-formed reply."""
    calls: list[str] = []

    def answer(request: Any) -> tuple[int, dict[str, str], bytes]:
        path = request.url.split("127.0.0.1:9", 1)[1].split("?", 1)[0]
        calls.append(path)
        try:
            streamed = json.loads(request.body).get("stream") is True
        except (ValueError, AttributeError, TypeError):
            streamed = False
        if streamed:
            return 200, {"content-type": "text/event-stream"}, STREAMS[path]
        return 200, {"content-type": "application/json"}, json.dumps(WHOLE[path]).encode()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for path in STREAMS:
            mock.add_callback(responses.POST, UPSTREAM + path, callback=answer)
        yield calls


@pytest.fixture(scope="module")
def client(upstream_calls: list[str]) -> Any:
    app = Flask("fuzz")
    app.config.update(
        LLM_PROXY_PROVIDERS={
            "anthropic": {"api_key": API_KEY, "base_url": UPSTREAM, "models": ["claude-*"], "max_body_bytes": 20000, "max_tokens": 4096},
            "openai": {"api_key": API_KEY, "base_url": UPSTREAM + "/v1", "models": ["gpt-4o", "gpt-4o-mini"]},
            "mock": {"type": "mock", "models": ["*"], "tokens": 3, "pace_ms": 0},
        },
        LLM_PROXY_REQUIRE_AUTH=False,  # tokens are still verified whenever one is sent
        LLM_PROXY_RATE_LIMIT="1000000/minute",  # exercised, never reached
        LLM_PROXY_TOKEN_QUOTA="1000000000/day",
        LLM_PROXY_MAX_BODY_BYTES=50000,
        LLM_PROXY_TRUSTED_PROXIES=1,  # client-controlled X-Forwarded-For becomes the identity
        LLM_PROXY_MAX_RETRIES=0,
        LLM_PROXY_KEEPALIVE=0,
        LLM_PROXY_CORS_ORIGINS=["https://app.example.com", "https://.*\\.example\\.org"],
        LLM_PROXY_USAGE_STORE="none",
        RATELIMIT_STORAGE_URI="memory://",
        JWT_SECRET_KEY=JWT_SECRET,
    )
    JWTManager(app)
    LLMProxy(app)
    return app.test_client()


def call(client: Any, upstream_calls: list[str], path: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes, int]:
    before = len(upstream_calls)
    with client.post(path, data=data, headers=headers) as resp:
        body = resp.get_data()
        status = resp.status_code
    return status, body, len(upstream_calls) - before


def check_neutral(status: int, body: bytes, upstream_called: int, path: str) -> None:
    assert status < 500, f"{status} from {path}: {body[:300]!r}"
    assert 200 <= status < 500
    if status >= 400:
        obj = json.loads(body)
        assert isinstance(obj, dict) and isinstance(obj.get("error"), str) and isinstance(obj.get("type"), str), obj
        assert upstream_called == 0, f"a {status} answer still cost {upstream_called} upstream call(s)"
    else:
        expected = 0 if path == "/api/mock" else 1
        assert upstream_called == expected, (status, upstream_called, body[:200])


# --- strategies ---------------------------------------------------------------------------------

KEYS = [
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "id",
    "name",
    "arguments",
    "input",
    "result",
    "tool_use_id",
    "is_error",
    "max_tokens",
    "max_new_tokens",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "stream",
    "parameters",
    "input_schema",
    "description",
    "function",
    "instructions",
    "reasoning",
    "store",
    "truncation",
    "parallel_tool_calls",
    "system",
    "stop_sequences",
    "base_url",
    "url",
]
NUMBERS = (
    st.integers()  # unbounded: huge ints included
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30, 1e308, -0.0, 0.5, 1.0, 2.0])
)
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=30)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


NESTED = st.builds(nested, st.integers(1, 200), SCALARS)  # below the known-bug depth (see the end)
ANY = JSON | NESTED


def mostly(valid: Any, k: int = 4) -> Any:
    """Valid most of the time (so the deep code paths are reached), arbitrary JSON otherwise."""
    return st.one_of(*([valid] * k), ANY)


WORD = st.sampled_from(["hi", "id=x tokens=2", "日本語 👋", "a\nb", "get_weather"]) | st.text(min_size=1, max_size=30).filter(str.strip)
TEXT = WORD | st.sampled_from(["", "   ", "\u0000"]) | st.text(max_size=40)
OBJECT = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), ANY, max_size=4)
MODELS = (
    mostly(st.sampled_from(["claude-3-5-sonnet-20241022", "claude-x", "gpt-4o", "gpt-4o-mini", "mock-1"]), 6)
    | st.sampled_from(["", " ", "x" * 300, "claude-/../../evil", "gpt-4o\u0000"])
    | st.text(max_size=12)
)
TEXT_BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": mostly(WORD)})
TOOL_USE = st.fixed_dictionaries({"type": st.just("tool_use"), "id": mostly(WORD), "name": mostly(WORD), "arguments": mostly(OBJECT)})
TOOL_RESULT = st.fixed_dictionaries(
    {"type": st.just("tool_result"), "tool_use_id": mostly(WORD), "result": ANY}, optional={"is_error": mostly(st.booleans())}
)
ODD_BLOCK = st.fixed_dictionaries(
    {"type": st.sampled_from(["image", "input_text", "thinking"]) | ANY},
    optional={"text": ANY, "id": ANY, "name": ANY, "arguments": ANY, "input": ANY, "tool_use_id": ANY, "result": ANY, "content": ANY},
)
USER = st.fixed_dictionaries(
    {"role": st.just("user"), "content": mostly(WORD | st.lists(TEXT_BLOCK | TOOL_RESULT, min_size=1, max_size=3))}
)
ASSISTANT = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": mostly(WORD | st.lists(TEXT_BLOCK | TOOL_USE, min_size=1, max_size=3))}
)
SYSTEM = st.fixed_dictionaries({"role": st.just("system"), "content": mostly(WORD | st.lists(TEXT_BLOCK, min_size=1, max_size=2))})
ODD_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | ANY,
        "content": TEXT | st.lists(ODD_BLOCK, max_size=2) | ANY,
    },
    optional={"name": ANY, "tool_calls": ANY},
)
CONVERSATION = st.builds(
    lambda system, turns, last: system + turns + [last],
    st.lists(SYSTEM, max_size=1),
    st.lists(USER | ASSISTANT | ODD_MESSAGE, max_size=3),
    USER,
)
TOOL = mostly(
    st.fixed_dictionaries({"name": mostly(WORD)}, optional={"description": mostly(WORD), "parameters": mostly(OBJECT)})
) | st.fixed_dictionaries({"type": st.just("function"), "function": ANY})
NUMBER_FIELD = mostly(st.integers(1, 100) | st.floats(0, 1), 2) | NUMBERS
OPTIONAL_FIELDS = {
    "max_tokens": NUMBER_FIELD,
    "max_new_tokens": NUMBER_FIELD,
    "temperature": NUMBER_FIELD,
    "top_p": NUMBER_FIELD,
    "top_k": NUMBER_FIELD,
    "seed": NUMBER_FIELD,
    "stop": mostly(WORD | st.lists(WORD, max_size=3)) | st.lists(TEXT, max_size=20),
    "tools": mostly(st.lists(TOOL, min_size=1, max_size=3)),
    "tool_choice": mostly(st.sampled_from(["auto", "none", "required", "any"]) | st.fixed_dictionaries({"name": WORD})),
    "stream": mostly(st.booleans()),
    "base_url": TEXT | ANY,
    "metadata": ANY,
    "n": NUMBERS,
}
CHAT_BODY = st.fixed_dictionaries({"model": MODELS, "messages": mostly(CONVERSATION, 6)}, optional=OPTIONAL_FIELDS)
INPUT_ITEM = mostly(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "developer", "assistant"]),
            "content": mostly(WORD | st.lists(ANY, min_size=1, max_size=3)),
        }
    )
) | st.fixed_dictionaries({"type": mostly(WORD)}, optional={"role": ANY, "content": ANY, "text": ANY})
RESPONSES_BODY = st.fixed_dictionaries(
    {"model": MODELS, "input": mostly(WORD | st.lists(INPUT_ITEM, min_size=1, max_size=4))},
    optional={
        "instructions": mostly(WORD),
        "max_output_tokens": NUMBER_FIELD,
        "temperature": NUMBER_FIELD,
        "tools": mostly(st.lists(st.fixed_dictionaries({"type": WORD}, optional={"name": ANY, "parameters": ANY}), max_size=2)),
        "tool_choice": mostly(st.sampled_from(["auto", "none", "required"]) | OBJECT),
        "reasoning": mostly(OBJECT),
        "text": mostly(OBJECT),
        "store": mostly(st.booleans()),
        "truncation": mostly(st.sampled_from(["auto", "disabled"])),
        "parallel_tool_calls": mostly(st.booleans()),
        "stream": mostly(st.booleans()),
        "previous_response_id": ANY,
    },
)


def to_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


VALID = b'{"model":"claude-3-5-sonnet-20241022","messages":[{"role":"user","content":"hi"}],"max_tokens":5'
RAW_SPECIALS = st.sampled_from(
    [
        VALID + b',"temperature":NaN}',
        VALID + b',"temperature":Infinity}',
        VALID + b',"top_p":-Infinity}',
        VALID + b',"seed":1' + b"0" * 5000 + b"}",
        VALID + b',"max_tokens":1' + b"0" * 400 + b"}",
        VALID + b',"seed":18446744073709551615}',
        VALID + b',"seed":-9223372036854775809}',
        VALID + b',"model":"gpt-4o","model":"claude-x"}',
        b'{"model":"mock-1","messages":[{"role":"user","content":"\xff\xfe\xc3\x28"}]}',
        b'{"model":"mock-1","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"mock-1","messages":[{"role":"user","content":"\\udc00\\ud800"}]}',
        b"\xef\xbb\xbf" + VALID + b"}",
        VALID,
        VALID + b"}}",
        VALID + b"} trailing",
        b"",
        b" ",
        b"null",
        b"[]",
        b"0",
        b'"x"',
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 1100 + b"1" + b"}" * 1100,
    ]
)


@st.composite
def raw_bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["chat", "responses", "any", "binary", "special", "mutated"]))
    if kind == "chat":
        return to_bytes(draw(CHAT_BODY))
    if kind == "responses":
        return to_bytes(draw(RESPONSES_BODY))
    if kind == "any":
        return to_bytes(draw(ANY))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "special":
        return draw(RAW_SPECIALS)
    data = to_bytes(draw(CHAT_BODY))  # a valid-ish document, then cut or spliced with garbage
    cut = draw(st.integers(0, len(data)))
    return data[:cut] + draw(st.binary(max_size=20)) + data[cut:][: draw(st.integers(0, len(data)))]


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=60)


@st.composite
def tokens(draw: Any) -> str:
    claims = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "sub": TEXT | ANY,
                "exp": NUMBERS | ANY,
                "iat": NUMBERS | ANY,
                "nbf": NUMBERS | ANY,
                "jti": TEXT | ANY,
                "type": st.sampled_from(["access", "refresh"]) | ANY,
                "fresh": ANY,
                "aud": ANY,
                "iss": ANY,
                "llm_models": st.lists(st.sampled_from(["*", "claude-*", "gpt-4o", "mock-*", "[", "\\"]), max_size=3) | ANY,
            },
        )
    )
    if draw(st.booleans()):  # mostly well-formed access tokens, so the claim checks get exercised
        now = int(time.time())
        claims = {"sub": "fuzzer", "type": "access", "iat": now, "nbf": now, "exp": now + 600, "jti": "j", **claims}
    secret = draw(st.sampled_from([JWT_SECRET, JWT_SECRET, "another-secret-that-is-also-long-enough"]))
    try:
        return pyjwt.encode(claims, secret, algorithm="HS256")
    except Exception:  # noqa: BLE001 - PyJWT refused to encode these claims: send them unsigned
        return "eyJhbGciOiJIUzI1NiJ9." + to_bytes(claims).hex() + ".sig"


@st.composite
def headers(draw: Any) -> dict[str, str]:
    h: dict[str, str] = {}
    if draw(st.booleans()):
        h["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
            | HEADER_TEXT
        )
    auth = draw(st.sampled_from(["none", "none", "token", "garbage"]))
    if auth == "token":
        h["Authorization"] = "Bearer " + draw(tokens())
    elif auth == "garbage":
        h["Authorization"] = draw(st.sampled_from(["Bearer ", "Bearer a.b.c", "Basic dXNlcjpwYXNz", "Bearer " + "A" * 2000]) | HEADER_TEXT)
    for name in ("X-Request-ID", "X-Forwarded-For", "x-api-key", "Origin", "anthropic-version", "Accept", "Cookie", "Content-Encoding"):
        if draw(st.integers(0, 4)) == 0:
            h[name] = draw(HEADER_TEXT)
    return h


NEUTRAL_PATHS = st.sampled_from(["/api/anthropic", "/api/openai", "/api/mock"])


# --- the properties -------------------------------------------------------------------------------


@FUZZ
@given(path=NEUTRAL_PATHS, data=raw_bodies(), hdrs=headers())
@example(path="/api/anthropic", data=VALID + b"}", hdrs={})
@example(path="/api/openai", data=b'{"model":"gpt-4o","input":"hi","max_output_tokens":5}', hdrs={})
@example(path="/api/mock", data=VALID + b"}", hdrs={"Authorization": "Bearer a.b.c"})
def test_any_body_and_headers_get_2xx_or_a_contract_4xx_and_a_4xx_never_calls_upstream(
    client: Any, upstream_calls: list[str], path: str, data: bytes, hdrs: dict[str, str]
) -> None:
    status, body, called = call(client, upstream_calls, path, data, hdrs)
    check_neutral(status, body, called, path)


@FUZZ
@given(path=NEUTRAL_PATHS, body=CHAT_BODY, token=tokens(), xff=HEADER_TEXT)
def test_tokens_with_arbitrary_claims_get_2xx_or_a_contract_4xx(
    client: Any, upstream_calls: list[str], path: str, body: Any, token: str, xff: str
) -> None:
    status, raw, called = call(
        client,
        upstream_calls,
        path,
        to_bytes(body),
        {"Authorization": f"Bearer {token}", "X-Forwarded-For": xff, "Content-Type": "application/json"},
    )
    check_neutral(status, raw, called, path)


NATIVE = {
    "/api/anthropic/v1/messages": "anthropic",
    "/api/openai/v1/chat/completions": "openai",
    "/api/openai/v1/responses": "openai",
}


@settings(FUZZ, max_examples=150)
@given(path=st.sampled_from(sorted(NATIVE)), data=raw_bodies(), hdrs=headers())
def test_native_sdk_endpoints_get_2xx_or_a_provider_shaped_4xx_and_a_4xx_never_calls_upstream(
    client: Any, upstream_calls: list[str], path: str, data: bytes, hdrs: dict[str, str]
) -> None:
    status, body, called = call(client, upstream_calls, path, data, hdrs)
    assert status < 500, f"{status} from {path}: {body[:300]!r}"
    if status >= 400:
        obj = json.loads(body)
        err = obj["error"]
        if NATIVE[path] == "anthropic":
            assert obj["type"] == "error"
        assert isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str), obj
        assert called == 0, f"a {status} answer still cost {called} upstream call(s)"
    else:
        assert 200 <= status < 300 and called == 1


# --- nesting deeper than orjson serializes (255..1024 levels) was once a 500 -----------------------


@pytest.mark.parametrize(
    "path,body",
    [
        (
            "/api/mock",
            {
                "model": "mock-1",
                "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "result": nested(300)}]}],
            },
        ),
        (
            "/api/anthropic",
            {
                "model": "claude-x",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "f", "parameters": nested(300)}],
            },
        ),
        (
            "/api/openai",
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "arguments": {"a": nested(300)}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c", "result": "ok"}]},
                ],
            },
        ),
        ("/api/openai", {"model": "gpt-4o", "input": [{"role": "user", "content": [nested(300)]}]}),
    ],
    ids=["mock-tool-result", "anthropic-tool-parameters", "openai-tool-arguments", "responses-input"],
)
def test_deeply_nested_json_is_a_400_not_a_500(client: Any, upstream_calls: list[str], path: str, body: Any) -> None:
    status, raw, called = call(client, upstream_calls, path, to_bytes(body), {"Content-Type": "application/json"})
    assert status == 400, f"{status} from {path}: {raw[:300]!r}"
    answer = json.loads(raw)
    assert answer["type"] == "invalid_request", answer
    # the client is told which limit it crossed: the nesting depth the proxy accepts
    assert f"nested deeper than {MAX_DEPTH} levels" in answer["error"], answer
    assert called == 0, "a body refused for its nesting still cost an upstream call"
