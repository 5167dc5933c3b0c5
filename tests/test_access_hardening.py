"""Hardening (issue 3): the key never leaks, clients cannot steer the upstream call, limits hold.

Real gunicorn (gevent workers) in front of the fake upstream, with the recognisable ``API_KEY`` of
conftest. Every error path is run and the key is looked for in each response body, each response
header and the server log; the fake upstream records what it received, and a second fake upstream
stands for the place an attacker would like the proxy to call.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import API_KEY, GunicornServer, base_env, chat_body, free_port, http, make_jwt, providers_for, uid
from fake_upstream import FakeUpstreamProcess

SONNET = "claude-3-5-sonnet-20241022"
GATEWAY_SECRET = "gw-header-secret-5a1f9c"  # a secret in a provider's extra headers (Azure's api-key, a gateway token)
KEY_FRAGMENTS = (API_KEY, API_KEY[-12:], API_KEY[3:15], GATEWAY_SECRET)  # the whole key and recognisable pieces of it
GLOBAL_MAX_BODY = 64 * 1024
PROVIDER_CAPS = {"max_tokens": 50, "max_messages": 3, "max_body_bytes": 4096}


@pytest.fixture(scope="module")
def evil() -> Iterator[FakeUpstreamProcess]:
    """Where an attacker wants the proxy to send its key: it must never see a request."""
    with FakeUpstreamProcess(key="attacker") as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    closed = f"http://127.0.0.1:{free_port()}"
    providers = {
        **providers_for(upstream.base_url),
        "dead": {"type": "anthropic", "api_key": API_KEY, "base_url": closed, "models": ["claude-*"]},
        "dead_oa": {"type": "openai", "api_key": API_KEY, "base_url": closed + "/v1", "models": ["gpt-4o"]},
        "capped": {"type": "anthropic", "api_key": API_KEY, "base_url": upstream.base_url, "models": ["claude-*"], **PROVIDER_CAPS},
        "capped_oa": {"type": "openai", "api_key": API_KEY, "base_url": upstream.base_url + "/v1", "models": ["gpt-4o"], **PROVIDER_CAPS},
        "gateway": {
            "type": "openai",
            "api_key": API_KEY,
            "base_url": upstream.base_url + "/v1",
            "models": ["gpt-4o"],
            "headers": {"api-key": GATEWAY_SECRET},
        },
    }
    env = base_env(
        upstream.base_url,
        tmp_path_factory.mktemp("access-hardening"),
        LLM_PROXY_PROVIDERS=providers,
        LLM_PROXY_MAX_BODY_BYTES=GLOBAL_MAX_BODY,
        LOG_LEVEL="DEBUG",
    )
    s = GunicornServer(env, workers=1, name="hardening")
    yield s
    s.stop()


def assert_no_key(where: str, text: str) -> None:
    for fragment in KEY_FRAGMENTS:
        assert fragment not in text, f"the API key (or a piece of it, {fragment!r}) leaked into {where}"


def assert_contract_error(
    status: int, headers: Any, body: bytes, expected_status: int | tuple[int, ...], type_: str | None = None
) -> dict[str, Any]:
    expected = (expected_status,) if isinstance(expected_status, int) else expected_status
    assert status in expected, (status, body[:500])
    assert headers["Content-Type"].startswith("application/json"), headers
    obj = json.loads(body)
    assert isinstance(obj.get("error"), str) and obj["error"] and isinstance(obj.get("type"), str), obj
    if type_ is not None:
        assert obj["type"] == type_, obj
    return obj


# --- the key never leaks ------------------------------------------------------------------------

ERROR_PATHS: dict[str, tuple[str, Any, Any]] = {
    # name: (provider, body (dict, or bytes sent raw), expected status)
    "bad-json": ("anthropic", b'{"model": "claude-3-5-sonnet-20241022", "messages": [', 400),
    "not-an-object": ("anthropic", b"[1, 2, 3]", 400),
    "unknown-model": ("anthropic", chat_body("hi", model="gpt-4o"), 400),
    "bad-params": ("openai", chat_body("hi", model="gpt-4o", temperature=7, max_tokens=-1), 400),
    "anthropic-401-echo": ("anthropic", chat_body("status=401 echo_headers=1"), (401, 502)),
    "openai-401-echo": ("openai", chat_body("status=401 echo_headers=1", model="gpt-4o"), (401, 502)),
    "anthropic-403-echo-no-stream": ("anthropic", chat_body("status=403 echo_headers=1", stream=False), (403, 502)),
    "anthropic-500-echo": ("anthropic", chat_body("status=500,500,500 echo_headers=1"), 502),
    "openai-500-echo": ("openai", chat_body("status=500,500,500 echo_headers=1", model="gpt-4o"), 502),
    "openai-400-echo": ("openai", chat_body("status=400 echo_headers=1", model="gpt-4o"), 400),
    "anthropic-400-echo-no-stream": ("anthropic", chat_body("status=400 echo_headers=1", stream=False), 400),
    "openai-429-echo": ("openai", chat_body("status=429,429,429 retry_after=0 echo_headers=1", model="gpt-4o"), 429),
    "anthropic-529-echo": ("anthropic", chat_body("status=529,529,529 echo_headers=1"), 503),
    "responses-500-echo": ("openai", {"model": "gpt-4o", "input": "status=500,500,500 echo_headers=1"}, 502),
    "header-secret-400-echo": ("gateway", chat_body("status=400 echo_headers=1", model="gpt-4o"), 400),
    "header-secret-503-retried-echo": ("gateway", chat_body("status=503,503,503 echo_headers=1", model="gpt-4o"), 503),
    "timeout-before-headers": ("anthropic", chat_body("hang=headers"), 504),
    "unreachable-anthropic": ("dead", chat_body("hi"), 502),
    "unreachable-openai": ("dead_oa", chat_body("hi", model="gpt-4o", stream=False), 502),
    "drop-mid-stream": ("anthropic", chat_body("tokens=6 drop_after=2"), 200),
    "openai-drop-mid-stream": ("openai", chat_body("tokens=6 drop_after=2", model="gpt-4o"), 200),
    "error-event-mid-stream": ("anthropic", chat_body("tokens=6 error_after=2"), 200),
    "error-event-echo-mid-stream": ("anthropic", chat_body("tokens=6 error_after=2 echo_headers=1"), 200),
    "openai-error-event-echo-mid-stream": ("openai", chat_body("tokens=6 error_after=2 echo_headers=1", model="gpt-4o"), 200),
    "header-secret-error-event-echo": ("gateway", chat_body("tokens=6 error_after=2 echo_headers=1", model="gpt-4o"), 200),
    "silent-mid-stream": ("openai", chat_body("tokens=6 hang_after=1", model="gpt-4o"), 200),
}


def send(server: GunicornServer, provider: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    kw: dict[str, Any] = (
        {"data": body, "headers": {"Content-Type": "application/json", **(headers or {})}}
        if isinstance(body, bytes)
        else {"json": body, "headers": headers or {}}
    )
    with http().post(f"{server.url}/api/{provider}", stream=True, timeout=30, **kw) as r:
        return r.status_code, r.headers, r.raw.read()


def with_id(body: Any, rid: str) -> Any:
    """A unique scenario id: the fake upstream counts attempts (status=A,B,..) per id."""
    if isinstance(body, bytes):
        return body
    body = json.loads(json.dumps(body))
    if "messages" in body:
        body["messages"][-1]["content"] = f"id={rid} " + body["messages"][-1]["content"]
    else:
        body["input"] = f"id={rid} " + body["input"]
    return body


@pytest.mark.parametrize("name", list(ERROR_PATHS))
def test_the_api_key_appears_in_no_response_body_header_or_log_line(server: GunicornServer, upstream: Any, name: str) -> None:
    provider, body, expected = ERROR_PATHS[name]
    rid = uid(f"leak-{name}")
    status, headers, raw = send(server, provider, with_id(body, rid))
    if expected == 200:
        assert status == 200
        assert b"\nerror: " in b"\n" + raw, raw[-300:]  # the stream ended in the contract's error line
    else:
        assert_contract_error(status, headers, raw, expected)
    assert_no_key(f"the response body of {name}", raw.decode("utf-8", "replace"))
    assert_no_key(f"the response headers of {name}", "\n".join(f"{k}: {v}" for k, v in headers.items()))
    time.sleep(0.1)  # the request's log line is written when the exchange is finalized
    assert_no_key("the server log", server.log())


NATIVE_ERROR_PATHS = {
    "anthropic-native-401-echo": (
        "anthropic/v1/messages",
        {"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": "status=401 echo_headers=1"}]},
    ),
    "anthropic-native-400-echo-stream": (
        "anthropic/v1/messages",
        {"model": SONNET, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "status=400 echo_headers=1"}]},
    ),
    "openai-native-500-echo": (
        "openai/v1/chat/completions",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "status=500,500,500 echo_headers=1"}]},
    ),
    "responses-native-403-echo": ("openai/v1/responses", {"model": "gpt-4o", "input": "status=403 echo_headers=1"}),
    "native-unreachable": ("dead/v1/messages", {"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.mark.parametrize("name", list(NATIVE_ERROR_PATHS))
def test_the_native_sdk_endpoints_leak_no_key_either(server: GunicornServer, name: str) -> None:
    path, body = NATIVE_ERROR_PATHS[name]
    status, headers, raw = send(server, path, with_id(body, uid(name)))
    assert status >= 400, raw[:300]
    assert_no_key(f"the response body of {name}", raw.decode("utf-8", "replace"))
    assert_no_key(f"the response headers of {name}", "\n".join(f"{k}: {v}" for k, v in headers.items()))
    time.sleep(0.1)
    assert_no_key("the server log", server.log())


NATIVE_STREAM_ERRORS = {
    # an error event in the middle of a stream the native endpoint relays byte for byte, quoting the headers it got
    "messages": (
        "anthropic/v1/messages",
        {
            "model": SONNET,
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "tokens=6 error_after=2 echo_headers=1"}],
        },
    ),
    "chat": (
        "openai/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "tokens=6 error_after=2 echo_headers=1"}]},
    ),
    "responses": ("openai/v1/responses", {"model": "gpt-4o", "stream": True, "input": "tokens=6 error_after=2 echo_headers=1"}),
    "chat-gateway-header": (
        "gateway/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "tokens=6 error_after=2 echo_headers=1"}]},
    ),
}


@pytest.mark.parametrize("name", list(NATIVE_STREAM_ERRORS))
def test_an_upstream_error_event_relayed_by_a_native_endpoint_loses_the_key(server: GunicornServer, upstream: Any, name: str) -> None:
    """The native endpoints relay the upstream's bytes unchanged, its error event too; a secret the
    event quotes is redacted in the relayed copy, the rest of the event is the upstream's."""
    path, body = NATIVE_STREAM_ERRORS[name]
    rid = uid(f"native-event-{name}")
    status, headers, raw = send(server, path, with_id(body, rid))
    assert status == 200, raw[:300]
    text = raw.decode("utf-8", "replace")
    secret = GATEWAY_SECRET if "gateway" in name else API_KEY
    assert secret in json.dumps(upstream.requests(id=rid)[0]["headers"])  # the upstream got it, and quoted it...
    assert "Received headers:" in text and "[redacted]" in text, text[-600:]  # ...in the event the client got, redacted
    assert_no_key(f"the relayed stream of {name}", text)


def test_the_echoed_upstream_error_is_kept_but_redacted(server: GunicornServer, upstream: Any) -> None:
    """The upstream's message is useful to the developer; only the secret in it must go."""
    rid = uid("echo-400")
    status, headers, raw = send(server, "openai", chat_body(f"id={rid} status=400 echo_headers=1", model="gpt-4o"))
    err = assert_contract_error(status, headers, raw, 400)
    assert upstream.requests(id=rid)[0]["headers"]["authorization"] == f"Bearer {API_KEY}"  # it was echoed...
    assert "Received headers" in err["error"]  # ...the message survives...
    assert_no_key("the error message", err["error"])  # ...without the key


def test_the_server_log_holds_no_key_after_all_error_paths(server: GunicornServer) -> None:
    for provider, body, _ in ERROR_PATHS.values():  # again, in case this test runs alone
        if not isinstance(body, bytes) and "hang" not in json.dumps(body):
            send(server, provider, with_id(body, uid("log")))
    time.sleep(0.3)
    log = server.log()
    assert "llm_proxy.request" in log  # the log is really being written
    assert_no_key("the server log", log)


# --- no SSRF: nothing the client sends chooses where the upstream call goes ------------------


def test_url_fields_in_the_body_do_not_redirect_the_upstream_call(server: GunicornServer, upstream: Any, evil: FakeUpstreamProcess) -> None:
    target = evil.base_url
    for provider, model, path in (("anthropic", SONNET, "/v1/messages"), ("openai", "gpt-4o", "/v1/chat/completions")):
        rid = uid("ssrf-body")
        body = chat_body(
            f"id={rid} tokens=2",
            model=model,
            base_url=target,
            url=target + path,
            baseURL=target,
            api_base=target,
            endpoint=target,
            host=target,
            provider="evil",
            path="/../../evil",
        )
        status, _, raw = send(server, provider, body)
        assert status == 400 and json.loads(raw)["error"].startswith("base_url: "), raw[:300]  # refused by name
        assert upstream.requests(id=rid) == []
        for field in ("base_url", "url", "baseURL", "api_base", "endpoint", "host", "provider", "path"):
            del body[field]
        status, _, raw = send(server, provider, body)  # and without them, to the configured upstream
        assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
        assert [r["path"] for r in upstream.requests(id=rid)] == [path]
    assert evil.requests() == []


def test_host_and_forwarding_headers_do_not_redirect_the_upstream_call(
    server: GunicornServer, upstream: Any, evil: FakeUpstreamProcess
) -> None:
    evil_host = evil.base_url.split("//", 1)[1]
    rid = uid("ssrf-headers")
    headers = {
        "Host": evil_host,
        "X-Forwarded-Host": evil_host,
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Port": str(evil.port),
        "Forwarded": f"host={evil_host};proto=http",
        "X-Original-URL": "/v1/evil",
        "X-Rewrite-URL": "/v1/evil",
        "X-Forwarded-Prefix": "/evil",
    }
    status, _, raw = send(server, "anthropic", chat_body(f"id={rid} tokens=2"), headers)
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    assert [r["path"] for r in upstream.requests(id=rid)] == ["/v1/messages"]
    assert evil.requests() == []


def raw_http(server: GunicornServer, request_target: str, body: dict[str, Any], host: str | None = None) -> tuple[int, bytes]:
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(
            f"POST {request_target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{server.port}'}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.mark.parametrize(
    "target",
    [
        "/api/anthropic/../../evil",
        "/api/anthropic/..%2f..%2fevil",
        "/api/anthropic/%2e%2e/%2e%2e/v1/messages",
        "/api/../v1/messages",
        "/api/anthropic/v1/messages",
        "//{evil}/v1/messages",
        "http://{evil}/v1/messages",
        "http://{evil}/api/anthropic",
    ],
)
def test_request_paths_cannot_reach_another_upstream_or_path(
    server: GunicornServer, upstream: Any, evil: FakeUpstreamProcess, target: str
) -> None:
    evil_host = evil.base_url.split("//", 1)[1]
    rid = uid("ssrf-path")
    status, data = raw_http(server, target.format(evil=evil_host), chat_body(f"id={rid} tokens=1"))
    assert status != 0 and status < 500, data[:300]
    assert evil.requests() == []
    # if the request was served at all, it went to the configured endpoint and nowhere else
    assert {r["path"] for r in upstream.requests(id=rid)} <= {"/v1/messages"}
    if status != 200:
        assert upstream.requests(id=rid) == []


def test_a_query_string_cannot_redirect_the_upstream_call(server: GunicornServer, upstream: Any, evil: FakeUpstreamProcess) -> None:
    rid = uid("ssrf-query")
    r = http().post(
        f"{server.url}/api/anthropic",
        params={"base_url": evil.base_url, "url": evil.base_url + "/v1/messages"},
        json=chat_body(f"id={rid} tokens=1"),
        timeout=20,
    )
    assert r.status_code == 200
    assert [rec["path"] for rec in upstream.requests(id=rid)] == ["/v1/messages"]
    assert evil.requests() == []


def test_a_model_name_shaped_like_a_path_stays_in_the_body(server: GunicornServer, upstream: Any, evil: FakeUpstreamProcess) -> None:
    rid = uid("ssrf-model")
    model = f"claude-/../../../{evil.base_url}/v1/messages?x="
    status, _, raw = send(server, "anthropic", chat_body(f"id={rid} tokens=1", model=model))
    assert status == 200, raw[:300]
    recs = upstream.requests(id=rid)
    assert [r["path"] for r in recs] == ["/v1/messages"] and recs[0]["body"]["model"] == model
    assert evil.requests() == []


# --- only known fields and the proxy's own headers reach the upstream ------------------------
# A field the proxy does not know is refused with a 400 naming it (never dropped silently, never
# forwarded); what each provider does with the known ones is tests/test_request_fields.py.

SMUGGLED_ANTHROPIC = {
    "metadata": {"user_id": "spoofed"},
    "api_key": "client-key",
    "betas": ["evil-beta"],
    "extra_headers": {"x-api-key": "client-key"},
    "service_tier": "priority",
    "n": 8,
    "anthropic_version": "1999-01-01",
    "container": "c",
    "mcp_servers": [{"url": "http://evil"}],
}
SMUGGLED_OPENAI = {
    "n": 8,
    "logit_bias": {"50256": 100},
    "user": "spoofed",
    "service_tier": "priority",
    "stream_options": {"include_usage": False},
    "max_completion_tokens": 99999,
    "store": True,
    "metadata": {"a": "b"},
    "functions": [{"name": "f"}],
    "api_key": "client-key",
    "logprobs": True,
    "top_logprobs": 20,
    "prediction": {"type": "content"},
}


@pytest.mark.parametrize(
    "provider, field, value",
    [("anthropic", k, v) for k, v in SMUGGLED_ANTHROPIC.items()] + [("openai", k, v) for k, v in SMUGGLED_OPENAI.items()],
)
def test_an_unknown_body_field_is_refused_by_name_without_an_upstream_call(
    server: GunicornServer, upstream: Any, provider: str, field: str, value: Any
) -> None:
    rid = uid(f"fields-{provider}")
    model = "gpt-4o" if provider == "openai" else "claude-3-5-sonnet-20241022"
    status, _, raw = send(server, provider, chat_body(f"id={rid} tokens=1", model=model, **{field: value}))
    assert status == 400, raw[:300]
    assert json.loads(raw)["error"].startswith(f"{field}: ")
    assert upstream.requests(id=rid) == []


@pytest.mark.parametrize("key", ["cache_control", "name", "id", "tool_calls"])
def test_unknown_keys_of_a_message_are_refused_not_forwarded(server: GunicornServer, upstream: Any, key: str) -> None:
    rid = uid("fields-message")
    body = chat_body(f"id={rid} tokens=1")
    body["messages"][0][key] = {"type": "ephemeral"} if key == "cache_control" else "x"
    status, _, raw = send(server, "anthropic", body)
    assert status == 400 and json.loads(raw)["error"].startswith(f"messages[0].{key}: "), raw[:300]
    assert upstream.requests(id=rid) == []


def test_known_fields_reach_anthropic_and_nothing_else(server: GunicornServer, upstream: Any) -> None:
    rid = uid("fields-anthropic")
    status, _, _ = send(server, "anthropic", chat_body(f"id={rid} tokens=1"))
    assert status == 200
    sent = upstream.requests(id=rid)[0]["body"]
    assert set(sent) == {"model", "messages", "max_tokens", "stream"}
    assert set(sent["messages"][0]) == {"role", "content"} and sent["max_tokens"] == 100


def test_known_fields_reach_openai_with_the_proxys_own_stream_options(server: GunicornServer, upstream: Any) -> None:
    rid = uid("fields-openai")
    status, _, _ = send(server, "openai", chat_body(f"id={rid} tokens=1", model="gpt-4o"))
    assert status == 200
    sent = upstream.requests(id=rid)[0]["body"]
    assert set(sent) == {"model", "messages", "stream", "stream_options", "max_tokens"}
    assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 100


@pytest.mark.parametrize(
    "field, value",
    [
        ("previous_response_id", "resp_victim"),
        ("background", True),
        ("include", ["file_search_call.results"]),
        ("user", "spoofed"),
        ("service_tier", "priority"),
        ("api_key", "k"),
    ],
)
def test_unknown_fields_of_the_responses_form_are_refused_by_name(server: GunicornServer, upstream: Any, field: str, value: Any) -> None:
    rid = uid("fields-responses")
    body = {"model": "gpt-4o", "input": f"id={rid} tokens=1", "max_output_tokens": 40, field: value}
    status, _, raw = send(server, "openai", body)
    assert status == 400 and json.loads(raw)["error"].startswith(f"{field}: "), raw[:300]
    assert upstream.requests(id=rid) == []


def test_client_credentials_and_headers_are_not_forwarded(server: GunicornServer, upstream: Any) -> None:
    rid = uid("headers-anthropic")
    headers = {
        "Authorization": f"Bearer {make_jwt('dave')}",
        "x-api-key": "client-key",
        "anthropic-version": "1999-01-01",
        "anthropic-beta": "evil-beta",
        "Cookie": "session=abc",
        "X-Forwarded-For": "203.0.113.5",
        "OpenAI-Organization": "org-evil",
    }
    status, _, _ = send(server, "anthropic", chat_body(f"id={rid} tokens=1"), headers)
    assert status == 200
    sent = upstream.requests(id=rid)[0]["headers"]
    assert sent["x-api-key"] == API_KEY and sent["anthropic-version"] == "2023-06-01"
    assert not {"authorization", "anthropic-beta", "cookie", "x-forwarded-for", "openai-organization"} & set(sent), sent


# --- per-provider caps and the global body limit ----------------------------------------------


@pytest.mark.parametrize("provider,model", [("capped", SONNET), ("capped_oa", "gpt-4o")])
@pytest.mark.parametrize("field", ["max_tokens", "max_new_tokens"])
def test_a_provider_max_tokens_cap_refuses_more_with_a_400_and_no_upstream_call(
    server: GunicornServer, upstream: Any, provider: str, model: str, field: str
) -> None:
    rid = uid("cap-tokens")
    body = {"model": model, "messages": [{"role": "user", "content": f"id={rid}"}], field: 51}
    status, headers, raw = send(server, provider, body)
    err = assert_contract_error(status, headers, raw, 400, "invalid_request")
    assert field in err["error"] and "50" in err["error"]
    assert upstream.requests(id=rid) == []
    rid_ok = uid("cap-tokens-ok")
    status, _, _ = send(server, provider, {"model": model, "messages": [{"role": "user", "content": f"id={rid_ok} tokens=1"}], field: 50})
    assert status == 200 and len(upstream.requests(id=rid_ok)) == 1


def test_a_provider_max_tokens_cap_holds_for_openai_when_the_client_sends_none(server: GunicornServer, upstream: Any) -> None:
    rid = uid("cap-default-oa")
    status, _, _ = send(server, "capped_oa", {"model": "gpt-4o", "messages": [{"role": "user", "content": f"id={rid} tokens=1"}]})
    assert status == 200
    assert upstream.requests(id=rid)[0]["body"]["max_tokens"] <= PROVIDER_CAPS["max_tokens"]


def test_a_provider_max_tokens_cap_holds_for_anthropic_when_the_client_sends_none(server: GunicornServer, upstream: Any) -> None:
    rid = uid("cap-default-anthropic")
    status, _, _ = send(server, "capped", {"model": SONNET, "messages": [{"role": "user", "content": f"id={rid} tokens=1"}]})
    assert status == 200
    assert upstream.requests(id=rid)[0]["body"]["max_tokens"] <= PROVIDER_CAPS["max_tokens"]


@pytest.mark.parametrize("provider,model", [("capped", SONNET), ("capped_oa", "gpt-4o")])
def test_a_provider_max_messages_cap_refuses_more_with_a_400_and_no_upstream_call(
    server: GunicornServer, upstream: Any, provider: str, model: str
) -> None:
    rid = uid("cap-messages")
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "user", "content": f"id={rid}"},
    ]
    status, headers, raw = send(server, provider, {"model": model, "messages": turns, "max_tokens": 10})
    err = assert_contract_error(status, headers, raw, 400, "invalid_request")
    assert "messages" in err["error"]
    assert upstream.requests(id=rid) == []
    rid_ok = uid("cap-messages-ok")
    turns = turns[:2] + [{"role": "user", "content": f"id={rid_ok} tokens=1"}]
    status, _, _ = send(server, provider, {"model": model, "messages": turns, "max_tokens": 10})
    assert status == 200 and len(upstream.requests(id=rid_ok)) == 1


def padded_body(rid: str, size: int, model: str = SONNET) -> bytes:
    body = chat_body(f"id={rid} tokens=1 ", model=model, max_tokens=10)
    raw = json.dumps(body).encode()
    body["messages"][0]["content"] += "x" * (size - len(raw))
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


def chunked(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


BODY_LIMITS = [("capped", PROVIDER_CAPS["max_body_bytes"]), ("capped_oa", PROVIDER_CAPS["max_body_bytes"]), ("anthropic", GLOBAL_MAX_BODY)]


def post_raw(server: GunicornServer, provider: str, data: Any) -> Any:
    return http().post(f"{server.url}/api/{provider}", data=data, headers={"Content-Type": "application/json"}, timeout=20)


@pytest.mark.parametrize("provider,limit", BODY_LIMITS)
def test_a_body_over_the_size_limit_is_a_413_and_no_upstream_call(server: GunicornServer, upstream: Any, provider: str, limit: int) -> None:
    model = "gpt-4o" if provider.endswith("_oa") else SONNET
    rid = uid("too-big")
    r = post_raw(server, provider, padded_body(rid, limit + 1, model))
    assert_contract_error(r.status_code, r.headers, r.content, 413, "payload_too_large")
    assert upstream.requests(id=rid) == []
    # exactly at the limit is fine
    rid_ok = uid("just-fits")
    r = post_raw(server, provider, padded_body(rid_ok, limit, model))
    assert r.status_code == 200, r.text[:300]
    assert len(upstream.requests(id=rid_ok)) == 1


def test_a_chunked_body_within_the_limit_is_read_whole(server: GunicornServer, upstream: Any) -> None:
    rid = uid("chunked-fits")
    r = post_raw(server, "capped", chunked(padded_body(rid, PROVIDER_CAPS["max_body_bytes"] - 10)))
    assert "Content-Length" not in r.request.headers and r.request.headers["Transfer-Encoding"] == "chunked"
    assert r.status_code == 200, r.text[:300]
    assert len(upstream.requests(id=rid)) == 1


CHUNKED_BUG = (
    "BUG: views.read_json relies on werkzeug raising RequestEntityTooLarge, but for a body without "
    "Content-Length werkzeug's LimitedStream.readall() stops silently at max_content_length: the body is "
    "truncated to the limit (400 'not valid JSON', or a truncated body that still parses is served)"
)


@pytest.mark.parametrize("provider,limit", BODY_LIMITS)
def test_a_chunked_body_over_the_size_limit_is_a_413_and_no_upstream_call(
    server: GunicornServer, upstream: Any, provider: str, limit: int
) -> None:
    model = "gpt-4o" if provider.endswith("_oa") else SONNET
    rid = uid("too-big-chunked")
    r = post_raw(server, provider, chunked(padded_body(rid, limit + 1, model)))
    assert "Content-Length" not in r.request.headers and r.request.headers["Transfer-Encoding"] == "chunked"
    assert upstream.requests(id=rid) == []
    assert_contract_error(r.status_code, r.headers, r.content, 413, "payload_too_large")


def test_a_chunked_body_over_the_limit_is_not_truncated_and_served(server: GunicornServer, upstream: Any) -> None:
    """A JSON document padded with whitespace past the limit: the proxy must refuse it, not parse its first part."""
    rid = uid("truncated")
    doc = json.dumps(chat_body(f"id={rid} tokens=1", max_tokens=10)).encode()
    r = post_raw(server, "capped", chunked(doc + b" " * (2 * PROVIDER_CAPS["max_body_bytes"])))
    assert upstream.requests(id=rid) == [], "a body twice the size limit was truncated and forwarded"
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/api/no-such-provider", "/api/anthropic/extra"])
def test_an_unknown_provider_is_a_contract_404(server: GunicornServer, path: str) -> None:
    r = http().post(f"{server.url}{path}", json=chat_body("hi"), timeout=10)
    assert r.status_code == 404
    assert_contract_error(r.status_code, r.headers, r.content, 404)


def test_retry_log_lines_name_the_request(server: GunicornServer) -> None:
    """An operator follows one request through the log by its X-Request-ID, its retries included."""
    rid = uid("retry-log")
    status, headers, _ = send(server, "anthropic", chat_body(f"id={rid} status=500 tokens=2"), headers={"X-Request-ID": rid})
    assert status == 200 and headers["X-Request-ID"] == rid
    status, _, _ = send(
        server, "anthropic", chat_body(f"id={rid}-event tokens=2 error_after=0 error_attempts=1"), headers={"X-Request-ID": rid + "-event"}
    )
    assert status == 200
    time.sleep(0.1)
    log = server.log()
    assert f"request {rid}: upstream attempt 1 failed" in log
    assert f"request {rid}-event: upstream attempt 1 failed in its first event" in log
