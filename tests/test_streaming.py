"""Streaming through a real gunicorn (gevent workers) against the fake upstream.

These are the behaviours a browser relies on: every token arrives, in order, in the contract's
shape, as it is produced; failures end in an answer the client can act on; a browser that goes
away stops the upstream call.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import API_KEY, chat_body, http, make_jwt, open_raw_stream, sse_events, uid
from fake_upstream import CHAT, error_body, expected_text

ANTHROPIC = ("anthropic", "claude-3-5-sonnet-20241022")
OPENAI = ("openai", "gpt-4o")


def post(proxy: Any, provider: str, body: dict[str, Any], **kw: Any) -> Any:
    return http().post(f"{proxy.url}/api/{provider}", json=body, stream=True, timeout=kw.pop("timeout", 20), **kw)


def assert_contract_stream(events: list[Any], n_tokens: int) -> dict[str, Any]:
    """The CONTRACT.md shape: ids without gaps, isFirst+ttfbMs first, one isLast, then [DONE]."""
    assert events[-1] == "[DONE]", events[-3:]
    data = events[:-1]
    assert all(isinstance(e, dict) for e in data), data
    assert [e["tokenId"] for e in data] == list(range(len(data)))
    assert data[0]["isFirst"] is True and isinstance(data[0]["ttfbMs"], int)
    assert all("isFirst" not in e for e in data[1:])
    last = data[-1]
    assert [e.get("isLast") for e in data].count(True) == 1 and last["isLast"] is True
    assert last["token"] == ""
    assert "".join(e["token"] for e in data) == expected_text(n_tokens)
    return last


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
@pytest.mark.parametrize("knobs", ["", "split=7", "split=1 crlf=1", "cr=1 ping=1 unknown=1", "split=3 multiline=1 ping=1"])
def test_every_token_arrives_in_order_in_the_contract_shape(proxy: Any, upstream: Any, provider: str, model: str, knobs: str) -> None:
    with post(proxy, provider, chat_body(f"tokens=25 {knobs}", model=model)) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Accel-Buffering"] == "no"
        events = sse_events(r)
    last = assert_contract_stream(events, 25)
    assert last["finishReason"] == "stop"
    assert last["usage"]["outputTokens"] == 25
    assert last["usage"]["inputTokens"] > 0


def test_responses_api_form_is_forwarded_to_responses(proxy: Any, upstream: Any) -> None:
    body = {"model": "gpt-4o", "input": "tokens=12 split=5 unknown=1 id=resp-form", "max_output_tokens": 50}
    with post(proxy, "openai", body) as r:
        events = sse_events(r)
    last = assert_contract_stream(events, 12)
    assert last["usage"]["outputTokens"] == 12
    seen = upstream.requests(id="resp-form")
    assert seen[0]["path"] == "/v1/responses" and seen[0]["body"]["stream"] is True


def test_upstream_request_carries_config_key_and_never_the_clients_credentials(proxy: Any, upstream: Any) -> None:
    with post(
        proxy, "anthropic", chat_body("id=hdrs tokens=1"), headers={"Authorization": f"Bearer {make_jwt()}", "x-api-key": "client-key"}
    ) as r:
        sse_events(r)
    rec = upstream.requests(id="hdrs")[0]
    assert rec["headers"]["x-api-key"] == API_KEY
    assert "authorization" not in rec["headers"]  # the client's JWT stays with the proxy
    assert rec["body"]["stream"] is True and rec["body"]["max_tokens"] == 100
    with post(proxy, "openai", chat_body("id=hdrs-oa tokens=1", model="gpt-4o")) as r:
        sse_events(r)
    rec = upstream.requests(id="hdrs-oa")[0]
    assert rec["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert rec["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
def test_first_token_reaches_the_client_long_before_the_upstream_finishes(proxy: Any, provider: str, model: str) -> None:
    start = time.monotonic()
    with post(proxy, provider, chat_body("tokens=8 pace_ms=250", model=model)) as r:
        first = None
        body = b""
        for chunk in r.iter_content(chunk_size=None):
            body += chunk
            if first is None and b'"tokenId":0' in body:
                first = time.monotonic() - start
        total = time.monotonic() - start
        assert first is not None and b"[DONE]" in body
    # the upstream needs 7 x 250 ms after its first token; the first one must not wait for them
    assert total >= 1.7
    assert first < total - 1.0, (first, total)


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
def test_tool_calls_arrive_as_tool_call_events(proxy: Any, provider: str, model: str) -> None:
    with post(proxy, provider, chat_body("tokens=2 tool=1 split=4", model=model)) as r:
        events = sse_events(r)
    calls = [e["toolCall"] for e in events if isinstance(e, dict) and "toolCall" in e]
    assert len(calls) == 1
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["arguments"] == {"city": "Oslo", "unit": "celsius"}
    assert events[-2]["finishReason"] == "tool_calls"


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
def test_stream_false_returns_the_contract_json(proxy: Any, provider: str, model: str) -> None:
    r = http().post(f"{proxy.url}/api/{provider}", json=chat_body("tokens=6 tool=1 input_tokens=17", model=model, stream=False), timeout=20)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["content"] == expected_text(6)
    assert body["finishReason"] == "tool_calls"
    # the upstream reports 17 input tokens and 6 + 5 (the tool call) output tokens
    usage = body["usage"]
    assert (usage["promptTokens"], usage["completionTokens"], usage["totalTokens"]) == (17, 11, 28), usage
    call = body["toolCalls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    assert body["tool_calls"] == body["toolCalls"]  # where agentary-js 3.x looks for them


def test_two_500s_then_success_streams_normally_after_backoff(proxy: Any, upstream: Any) -> None:
    with post(proxy, "anthropic", chat_body("id=retry-2x500 status=500,500 tokens=4")) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert_contract_stream(events, 4)
    assert [rec["status"] for rec in upstream.requests(id="retry-2x500")] == [500, 500, 200]


def test_a_400_is_not_retried_and_keeps_the_providers_message(proxy: Any, upstream: Any) -> None:
    r = http().post(f"{proxy.url}/api/openai", json=chat_body("id=no-retry-400 status=400", model="gpt-4o"), timeout=20)
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "upstream_invalid_request"
    providers_message = json.loads(error_body(CHAT, 400))["error"]["message"]  # what the fake's 400 says
    assert body["error"].endswith(f": {providers_message}"), body
    assert len(upstream.requests(id="no-retry-400")) == 1


def test_retries_exhausted_is_a_502_that_tells_clients_not_to_retry_again(proxy: Any, upstream: Any) -> None:
    r = http().post(f"{proxy.url}/api/anthropic", json=chat_body("id=always-500 status=500,500,500,500"), timeout=20)
    assert r.status_code == 502
    assert r.json()["type"] == "upstream_error"
    assert r.headers["x-should-retry"] == "false"
    assert len(upstream.requests(id="always-500")) == 3  # LLM_PROXY_MAX_RETRIES = 2


def test_upstream_that_never_answers_gives_a_504_timeout(proxy: Any, upstream: Any) -> None:
    start = time.monotonic()
    r = http().post(f"{proxy.url}/api/anthropic", json=chat_body("id=hang-headers hang=headers"), timeout=20)
    assert r.status_code == 504
    assert r.json()["type"] == "timeout" and r.json()["code"] == "TIMEOUT"
    assert time.monotonic() - start < 6


# unpaced, and paced: the silence watch (body.KeepaliveClock) times the silence after the last read
@pytest.mark.parametrize("knobs", ["tokens=10 hang_after=2", "tokens=10 pace_ms=40 hang_after=5"])
def test_upstream_silent_mid_stream_sends_keepalives_then_a_timeout_error_line(proxy: Any, knobs: str) -> None:
    with post(proxy, "openai", chat_body(knobs, model="gpt-4o")) as r:
        raw = r.raw.read()
    assert raw.count(b": ping\n\n") >= 2  # keep-alive every 0.5 s during the 2 s of silence
    assert raw.rstrip().splitlines()[-1].startswith(b"error: ")
    err = json.loads(raw.rstrip().splitlines()[-1][7:])
    assert err["code"] == "TIMEOUT" and err["statusCode"] == 504
    assert b"[DONE]" not in raw


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
def test_upstream_drop_mid_stream_ends_with_a_network_error_line(proxy: Any, provider: str, model: str) -> None:
    with post(proxy, provider, chat_body("tokens=10 drop_after=3", model=model)) as r:
        events = sse_events(r)
    tokens = [e for e in events if isinstance(e, dict)]
    assert [e["tokenId"] for e in tokens] == [0, 1, 2]
    assert events[-1][0] == "error" and events[-1][1]["code"] == "NETWORK_ERROR"
    assert "[DONE]" not in events


# the fake's in-stream errors: Anthropic {"type":"overloaded_error","message":"Overloaded"}, OpenAI
# {"type":"server_error","message":"The server had an error"}
@pytest.mark.parametrize(
    "provider,model,status,code,upstream_message",
    [
        (*ANTHROPIC, 503, "UPSTREAM_OVERLOADED", "Overloaded"),
        (*OPENAI, 502, "UPSTREAM_ERROR", "The server had an error"),
    ],
)
def test_error_event_inside_the_stream_becomes_an_error_line(
    proxy: Any, provider: str, model: str, status: int, code: str, upstream_message: str
) -> None:
    with post(proxy, provider, chat_body("tokens=10 error_after=2", model=model)) as r:
        events = sse_events(r)
    assert len([e for e in events if isinstance(e, dict)]) == 2
    kind, err = events[-1]
    assert kind == "error" and (err["statusCode"], err["code"]) == (status, code), err
    assert err["message"].endswith(f": {upstream_message}"), err


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
def test_an_error_event_before_the_first_token_is_retried_like_a_5xx(proxy: Any, upstream: Any, provider: str, model: str) -> None:
    """Upstreams answer 200 and then fail in their first event (Anthropic's overloaded_error):
    nothing reached the client yet, so the proxy retries it as it retries a 5xx status."""
    rid = uid("first-event")
    with post(proxy, provider, chat_body(f"id={rid} tokens=4 error_after=0 error_attempts=1", model=model)) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert_contract_stream(events, 4)
    assert [rec["attempt"] for rec in upstream.requests(id=rid)] == [0, 1]


@pytest.mark.parametrize("provider,model,status", [(*ANTHROPIC, 503), (*OPENAI, 502)])
def test_an_error_event_before_the_first_token_every_time_is_an_http_status(
    proxy: Any, upstream: Any, provider: str, model: str, status: int
) -> None:
    """Still failing after the retries: the status and JSON body CONTRACT.md asks for before any
    byte of the stream (not a 200 stream ending in an error line), marked as retried already."""
    rid = uid("first-event-always")
    with post(proxy, provider, chat_body(f"id={rid} tokens=10 error_after=0", model=model)) as r:
        assert r.status_code == status and r.headers["Content-Type"].startswith("application/json")
        body = r.json()
    assert body["error"] and body["type"].startswith("upstream_")
    assert r.headers["x-should-retry"] == "false"
    assert len(upstream.requests(id=rid)) == 3  # LLM_PROXY_MAX_RETRIES attempts in all


def test_a_status_after_in_stream_retries_still_tells_clients_not_to_retry(proxy: Any, upstream: Any) -> None:
    """Two first-event errors used the retries; the 503 that follows must not invite an SDK to
    multiply the calls again."""
    rid = uid("first-event-then-503")
    with post(proxy, "anthropic", chat_body(f"id={rid} tokens=4 error_after=0 error_attempts=2 status=200,200,503")) as r:
        assert r.status_code == 503
        r.raw.read()
    assert r.headers["x-should-retry"] == "false"
    assert len(upstream.requests(id=rid)) == 3


def test_a_keepalive_due_before_the_first_token_starts_the_stream(proxy: Any) -> None:
    with post(proxy, "anthropic", chat_body("tokens=3 first_ms=1200")) as r:
        assert r.status_code == 200
        raw = r.raw.read()
    assert raw.startswith(b": ping\n\n") and raw.rstrip().endswith(b"data: [DONE]")


def test_client_disconnect_closes_the_upstream_connection(proxy: Any, upstream: Any) -> None:
    sock, _ = open_raw_stream(proxy.url, "/api/anthropic", chat_body("id=disconnect tokens=400 pace_ms=50"), until=b'"tokenId":3')
    closed_at = time.monotonic()
    sock.close()  # the browser tab closes
    rec = upstream.wait_for_request("disconnect", lambda rec: rec["client_closed"], timeout=5)
    assert time.monotonic() - closed_at < 1.5  # noticed at the next token write (50 ms)
    assert not rec["completed"] and rec["tokens_sent"] < 100


@pytest.mark.parametrize("knobs", ["tokens=5 hang_after=1", "tokens=8 pace_ms=40 hang_after=4"])
def test_client_disconnect_during_upstream_silence_is_noticed_through_keepalives(proxy: Any, upstream: Any, knobs: str) -> None:
    rid = f"disconnect-silent-{len(knobs)}"
    sock, _ = open_raw_stream(proxy.url, "/api/anthropic", chat_body(f"id={rid} {knobs}"), until=b'"tokenId":0')
    sock.close()
    rec = upstream.wait_for_request(rid, lambda rec: rec["client_closed"], timeout=5)
    # LLM_PROXY_KEEPALIVE is 0.5 s here: the first ping after the close fails and ends the upstream
    # call long before the 2 s read timeout would have
    assert rec["closed_after_ms"] < 1900


def test_mock_provider_streams_without_any_upstream(proxy: Any) -> None:
    with post(proxy, "mock", chat_body("hello", model="anything")) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events[-2]["isLast"] is True
    assert [e["tokenId"] for e in events[:-1]] == list(range(6))


def test_upstream_connections_are_reused_between_requests(start_proxy: Any, upstream: Any) -> None:
    server = start_proxy(upstream.base_url, workers=1)  # one worker: one pool
    for i in range(4):
        with post(server, "anthropic", chat_body(f"id=reuse-{i} tokens=3")) as r:
            assert sse_events(r)[-1] == "[DONE]"
    conns = {upstream.requests(id=f"reuse-{i}")[0]["conn"] for i in range(4)}
    assert len(conns) == 1, conns  # one keep-alive connection served all four


def test_example_app_dev_tokens_are_only_handed_to_this_machine(tmp_path: Any) -> None:
    """The demo's sign-in mints a token for any user name: a request from another address (a BIND
    opened to the network) gets a 404, as if it were off."""
    from example_app.app import create_app

    app = create_app(
        {"EXAMPLE_DEV_TOKENS": True, "LLM_PROXY_USAGE_STORE": "none", "LLM_PROXY_RATE_LIMIT": None, "JWT_SECRET_KEY": "k" * 32}
    )
    client = app.test_client()
    local = client.post("/dev/token", json={"user": "alice"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert local.status_code == 200 and local.get_json()["user"] == "alice"
    for addr in ("203.0.113.5", "10.0.0.7"):
        assert client.post("/dev/token", json={"user": "alice"}, environ_base={"REMOTE_ADDR": addr}).status_code == 404


def test_example_app_dev_tokens_work_on_every_worker_without_a_configured_secret(start_proxy: Any, upstream: Any) -> None:
    # gunicorn.conf.py makes one development key in the master, so every worker accepts the token
    server = start_proxy(upstream.base_url, workers=3, JWT_SECRET_KEY="", EXAMPLE_DEV_TOKENS="1", LLM_PROXY_REQUIRE_AUTH=True)
    statuses = set()
    for _ in range(9):
        token = http().post(f"{server.url}/dev/token", json={"user": "dev"}, timeout=10).json()["token"]
        r = http().post(
            f"{server.url}/api/mock",
            json=chat_body("hi", model="m", stream=False),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        statuses.add(r.status_code)
    assert statuses == {200}


# --- what an upstream may send besides the usual chunked stream ---------------------------------


@pytest.mark.parametrize("provider,model", [ANTHROPIC, OPENAI])
@pytest.mark.parametrize("knobs", ["framing=length", "framing=close", "gzip=1", "framing=close gzip=1 crlf=1"])
def test_a_body_without_chunking_or_compressed_streams_token_by_token(proxy: Any, provider: str, model: str, knobs: str) -> None:
    """Some OpenAI-compatible servers send a stream with a Content-Length or end it by closing the
    connection, and a server may compress it: each token still reaches the client as it is
    produced, not when the body ends."""
    start = time.monotonic()
    with post(proxy, provider, chat_body(f"tokens=6 pace_ms=300 {knobs}", model=model)) as r:
        assert r.status_code == 200
        first = None
        body = b""
        for chunk in r.iter_content(chunk_size=None):
            body += chunk
            if first is None and b'"tokenId":0' in body:
                first = time.monotonic() - start
        total = time.monotonic() - start
    assert_contract_stream([e for e in sse_events_of(body)], 6)
    assert total >= 1.5 and first is not None and first < total - 1.0, (first, total)


def sse_events_of(raw: bytes) -> list[Any]:
    from flask_llm_proxy.upstream.sse import parse

    return ["[DONE]" if d == "[DONE]" else json.loads(d) for _, d in parse(raw)]


@pytest.mark.parametrize("knob", ["garbage=1", "head=truncated"])
def test_an_answer_that_is_not_http_is_a_502_protocol_error_not_retried(proxy: Any, upstream: Any, knob: str) -> None:
    rid = uid("not-http")
    r = http().post(f"{proxy.url}/api/anthropic", json=chat_body(f"id={rid} {knob}"), timeout=20)
    assert r.status_code == 502, r.text
    assert r.json()["type"] == "upstream_protocol_error", r.json()
    assert API_KEY not in r.text
    assert len(upstream.requests(id=rid)) == 1  # the same garbage would come back: not retried


def test_tls_to_a_plain_http_port_is_a_502_protocol_error_that_names_the_scheme(start_proxy: Any, upstream: Any) -> None:
    server = start_proxy(upstream.base_url.replace("http://", "https://"))
    r = http().post(f"{server.url}/api/anthropic", json=chat_body("tokens=2"), timeout=20)
    assert r.status_code == 502 and r.json()["type"] == "upstream_protocol_error", r.text
    assert "http://" in r.json()["error"]


def test_a_connection_cut_by_a_client_that_left_is_never_reused(start_proxy: Any, upstream: Any) -> None:
    """The upstream connection of a stream the browser left is closed, not returned to the pool
    half-read: the next request goes out on a new connection and gets a whole answer."""
    server = start_proxy(upstream.base_url, workers=1)
    with post(server, "anthropic", chat_body(f"id={uid('warm')} tokens=2")) as r:
        assert sse_events(r)[-1] == "[DONE]"
    rid = uid("left")
    sock, _ = open_raw_stream(server.url, "/api/anthropic", chat_body(f"id={rid} tokens=400 pace_ms=20"), until=b'"tokenId":2')
    sock.close()
    left = upstream.wait_for_request(rid, lambda rec: rec["client_closed"], timeout=5)
    after = uid("after")
    with post(server, "anthropic", chat_body(f"id={after} tokens=3")) as r:
        assert_contract_stream(sse_events(r), 3)
    assert upstream.requests(id=after)[0]["conn"] != left["conn"]


def test_without_keepalives_the_stream_is_the_same(start_proxy: Any, upstream: Any) -> None:
    server = start_proxy(upstream.base_url, LLM_PROXY_KEEPALIVE=None)
    for provider, model in (ANTHROPIC, OPENAI):
        with post(server, provider, chat_body("tokens=9 split=5 pace_ms=5", model=model)) as r:
            assert_contract_stream(sse_events(r), 9)
