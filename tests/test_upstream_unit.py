"""UpstreamClient.open and its error mapping (flask_llm_proxy/upstream.py) against the ``responses``
mock of requests' transport (no sockets, no timing), and UpstreamBody (flask_llm_proxy/body.py)
reading answers built by tests/wire.py.

Retries happen only before the first byte: 5xx, 429 and 529 and connection failures are retried
with backoff, other 4xx never; every error the client sees is mapped to a status it can act on and
never contains the API key.
"""

from __future__ import annotations

import email.utils
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import responses
from responses.registries import OrderedRegistry
from wire import FRAMINGS, response_of

from flask_llm_proxy.errors import (
    NetworkError,
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
)
from flask_llm_proxy.upstream import client as upstream
from flask_llm_proxy.upstream import errors as upstream_errors
from flask_llm_proxy.upstream.body import CLOCK, UpstreamBody
from flask_llm_proxy.upstream.client import UpstreamClient
from flask_llm_proxy.upstream.errors import parse_retry_after
from flask_llm_proxy.upstream.retry import RetryPolicy

URL = "https://upstream.test/v1/messages"
SECRET = "sk-ant-api03-Zx9SECRETSECRETSECRET"
PROVIDER = SimpleNamespace(name="p", base_url="https://upstream.test", headers={}, verify=True, cert=None)


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """Registered responses are served once each, in order; every registered one must be used."""
    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as rs:
        yield rs


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays open() asked for, without waiting for them."""
    delays: list[float] = []
    monkeypatch.setattr(upstream, "backoff_sleep", delays.append)
    return delays


POLICY = RetryPolicy(connect_timeout=1.0, read_timeout=1.0, max_retries=2, backoff=0.0, retry_after_max=5.0)


def call(max_retries: int = 2, on_retry: Any = None, **kw: Any) -> tuple[requests.Response, int]:
    """The open answer and how many retries it took (``on_retry`` calls); ``kw`` changes the policy."""
    seen: list[ProxyError] = []
    policy = replace(POLICY, max_retries=max_retries, **kw)
    client = UpstreamClient(pool_maxsize=4)
    target = client.target(PROVIDER, "/v1/messages", {"x-api-key": SECRET}, "text/event-stream")
    resp = client.open(target, b'{"model":"m"}', secrets=(SECRET,), policy=policy, on_retry=on_retry or seen.append)
    return resp, len(seen)


def fail(max_retries: int = 2, **kw: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        call(max_retries, **kw)
    return info.value


def add(mock: responses.RequestsMock, status: int = 200, body: Any = None, **kw: Any) -> None:
    if body is None:
        body = (
            b"event: message_stop\ndata: {}\n\n"
            if status < 300
            else json.dumps({"type": "error", "error": {"type": "api_error", "message": f"status {status}"}})
        )
    mock.add(responses.POST, URL, status=status, body=body, content_type="text/event-stream" if status < 300 else "application/json", **kw)


def anthropic_error(type_: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}})


# --- retries ----------------------------------------------------------------------------------


def test_two_500s_then_200_returns_after_two_retries(mock):
    add(mock, 500)
    add(mock, 500)
    add(mock, 200)
    resp, retries = call(max_retries=2)
    assert resp.status_code == 200 and retries == 2
    assert len(mock.calls) == 3
    assert resp.raw.read() == b"event: message_stop\ndata: {}\n\n", "the body is still unread: the stream is handed over"


def test_each_retry_resends_the_same_body_and_headers(mock):
    add(mock, 502)
    add(mock, 200)
    call()
    assert [c.request.body for c in mock.calls] == [b'{"model":"m"}'] * 2
    assert all(c.request.headers["x-api-key"] == SECRET for c in mock.calls)


def test_on_retry_is_told_each_failure_being_retried(mock):
    add(mock, 500)
    add(mock, 529)
    add(mock, 200)
    seen: list[ProxyError] = []
    call(on_retry=seen.append)
    assert [e.extra["upstream_status"] for e in seen] == [500, 529]


def test_retries_stop_after_max_retries(mock):
    for _ in range(3):
        add(mock, 500)
    err = fail(max_retries=2)
    assert len(mock.calls) == 3
    assert err.status == 502 and err.type == "upstream_error"
    assert err.retried is True


def test_backoff_doubles_between_attempts(mock, sleeps):
    for _ in range(4):
        add(mock, 503)
    fail(max_retries=3, backoff=0.25)
    assert sleeps == [0.25, 0.5, 1.0]


def test_the_retry_policy_doubles_its_wait_honours_retry_after_and_stops_at_its_limits():
    policy = RetryPolicy(connect_timeout=2.0, read_timeout=30.0, max_retries=3, backoff=0.5, retry_after_max=10.0)
    assert policy.timeout == (2.0, 30.0)  # requests' (connect, read)
    assert [policy.delay(n, None) for n in range(4)] == [0.5, 1.0, 2.0, None]  # 3 retries, then none
    assert policy.delay(0, 4.0) == 4.0  # the upstream's retry-after, when longer than the backoff
    assert policy.delay(2, 1.0) == 2.0  # ... never shorter
    assert policy.delay(0, 10.5) is None  # longer than retry_after_max: the client's to wait, not ours


def test_a_400_is_not_retried(mock):
    add(mock, 400, anthropic_error("invalid_request_error", "messages: roles must alternate"))
    err = fail(max_retries=3)
    assert len(mock.calls) == 1
    assert err.status == 400 and err.retried is False


def test_a_429_with_retry_after_beyond_the_maximum_is_not_retried_and_keeps_the_header(mock, sleeps):
    add(mock, 429, anthropic_error("rate_limit_error", "slow down"), headers={"retry-after": "30"})
    err = fail(max_retries=3, retry_after_max=5.0)
    assert len(mock.calls) == 1 and sleeps == []
    assert err.status == 429 and err.type == "upstream_rate_limited"
    assert err.headers == {"Retry-After": "30"}


def test_a_429_with_a_short_retry_after_is_retried_after_waiting_that_long(mock, sleeps):
    add(mock, 429, anthropic_error("rate_limit_error", "slow down"), headers={"retry-after": "2"})
    add(mock, 200)
    _, retries = call(backoff=0.1, retry_after_max=5.0)
    assert retries == 1 and sleeps == [2.0]


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it(mock, sleeps):
    add(mock, 503, headers={"retry-after": "0"})
    add(mock, 200)
    call(backoff=0.5)
    assert sleeps == [0.5]


def test_a_529_is_retried(mock):
    add(mock, 529, anthropic_error("overloaded_error", "Overloaded"))
    add(mock, 529, anthropic_error("overloaded_error", "Overloaded"))
    add(mock, 200)
    assert call(max_retries=2)[1] == 2


def test_a_529_that_stays_overloaded_becomes_503(mock, sleeps):
    for _ in range(2):
        add(mock, 529, anthropic_error("overloaded_error", "Overloaded"), headers={"retry-after": "1"})
    err = fail(max_retries=1)
    assert (err.status, err.type, err.retried) == (503, "upstream_overloaded", True)
    assert err.headers == {"Retry-After": "1"}


def test_retried_is_false_when_the_first_error_is_final(mock):
    add(mock, 401, anthropic_error("authentication_error", "invalid x-api-key"))
    assert fail().retried is False


def test_retried_is_false_when_retries_are_disabled(mock):
    add(mock, 500)
    err = fail(max_retries=0)
    assert len(mock.calls) == 1
    assert err.retried is False


def test_a_429_given_back_unretried_is_not_marked_retried(mock):
    add(mock, 429, anthropic_error("rate_limit_error", "slow down"), headers={"retry-after": "30"})
    assert fail(max_retries=3, retry_after_max=5.0).retried is False


# --- network failures -------------------------------------------------------------------------


def test_a_connection_error_becomes_a_retried_network_error(mock):
    for _ in range(3):
        mock.add(responses.POST, URL, body=requests.exceptions.ConnectionError("[Errno 111] Connection refused"))
    err = fail(max_retries=2)
    assert isinstance(err, NetworkError)
    assert (err.status, err.code, err.type, err.error_code) == (502, 502, "network_error", "NETWORK_ERROR")
    assert err.message == "could not reach the upstream: connection refused"
    assert len(mock.calls) == 3 and err.retried is True


def test_a_connection_error_then_success_returns(mock):
    mock.add(responses.POST, URL, body=requests.exceptions.ConnectionError("Connection reset by peer"))
    add(mock, 200)
    assert call()[1] == 1


def test_a_connection_error_message_never_holds_the_key(mock):
    mock.add(responses.POST, URL, body=requests.exceptions.ConnectionError(f"proxy said: bad header x-api-key={SECRET}"))
    err = fail(max_retries=0)
    assert SECRET not in err.message and "[redacted]" in err.message


def test_a_connect_timeout_is_retried_and_becomes_a_timeout(mock):
    mock.add(responses.POST, URL, body=requests.exceptions.ConnectTimeout("connect timed out"))
    mock.add(responses.POST, URL, body=requests.exceptions.ConnectTimeout("connect timed out"))
    err = fail(max_retries=1)
    assert isinstance(err, UpstreamTimeout) and err.status == 504
    assert len(mock.calls) == 2


def test_a_read_timeout_before_the_headers_is_not_retried(mock):
    mock.add(responses.POST, URL, body=requests.exceptions.ReadTimeout("read timed out"))
    err = fail(max_retries=3)
    assert isinstance(err, UpstreamTimeout) and err.status == 504
    assert len(mock.calls) == 1


def test_a_tls_error_is_not_retried(mock):
    mock.add(responses.POST, URL, body=requests.exceptions.SSLError("certificate verify failed"))
    err = fail(max_retries=3)
    assert isinstance(err, NetworkError) and "TLS" in err.message
    assert len(mock.calls) == 1


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upstream_status, status, type_",
    [
        (401, 502, "upstream_auth_error"),
        (403, 502, "upstream_auth_error"),
        (429, 429, "upstream_rate_limited"),
        (529, 503, "upstream_overloaded"),
        (503, 503, "upstream_overloaded"),
        (404, 404, "upstream_not_found"),
        (400, 400, "upstream_invalid_request"),
        (422, 400, "upstream_invalid_request"),
        (413, 413, "payload_too_large"),
        (500, 502, "upstream_error"),
        (502, 502, "upstream_error"),
        (504, 504, "timeout"),
    ],
)
def test_upstream_statuses_are_mapped_to_what_the_client_can_act_on(mock, upstream_status, status, type_):
    add(mock, upstream_status, anthropic_error("some_error", "details here"))
    err = fail(max_retries=0)
    assert (err.status, err.type) == (status, type_)
    assert err.extra == {"upstream_status": upstream_status}
    assert "details here" in err.message


def test_an_overloaded_error_type_on_a_500_is_mapped_to_503(mock):
    add(mock, 500, anthropic_error("overloaded_error", "Overloaded"))
    assert fail(max_retries=0).status == 503


def test_the_anthropic_error_message_is_kept(mock):
    add(mock, 400, anthropic_error("invalid_request_error", "max_tokens: 999999 > 8192, which is the maximum"))
    assert fail().message == "upstream rejected the request: max_tokens: 999999 > 8192, which is the maximum"


def test_the_openai_error_message_is_kept(mock):
    add(
        mock,
        404,
        json.dumps(
            {
                "error": {
                    "message": "The model `gpt-9` does not exist",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                }
            }
        ),
    )
    err = fail()
    assert err.message == "upstream: The model `gpt-9` does not exist"


def test_a_plain_string_error_is_kept(mock):
    add(mock, 400, json.dumps({"error": "bad prompt"}))
    assert fail().message.endswith("bad prompt")


def test_a_non_json_error_body_is_kept_in_part(mock):
    add(mock, 400, "<html>Bad Gateway" + "!" * 1000 + "</html>")
    err = fail()
    assert "<html>Bad Gateway" in err.message and len(err.message) < 600


def test_an_empty_error_body_names_the_status(mock):
    add(mock, 400, b"")
    assert fail().message == "upstream rejected the request: HTTP 400"


@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_api_key_echoed_in_a_json_error_is_redacted(mock, status):
    add(
        mock,
        status,
        json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}. Check it.", "type": "invalid_request_error"}}),
    )
    err = fail(max_retries=0)
    assert SECRET not in err.message and SECRET not in err.to_json().decode()
    assert "Incorrect API key provided: [redacted]. Check it." in err.message


def test_an_api_key_echoed_in_a_non_json_error_is_redacted(mock):
    add(mock, 401, f"denied for key {SECRET}")
    err = fail()
    assert SECRET not in err.message and "[redacted]" in err.message


@pytest.mark.parametrize("kept", [8, len(SECRET) // 2, len(SECRET) - 1])
def test_no_part_of_an_api_key_survives_truncation_of_a_non_json_error(mock, kept):
    """The message is cut at MAX_ERROR_MESSAGE characters; placed so that the cut falls inside the
    key, leaving its first ``kept`` characters, should the cut come before the key is scrubbed."""
    lead = upstream_errors.MAX_ERROR_MESSAGE - kept
    add(mock, 401, "x" * lead + SECRET + " rejected")
    err = fail()
    assert SECRET[:8] not in err.message
    # scrubbed first, then cut: the placeholder is what the cut shortens
    scrubbed = ("x" * lead + "[redacted] rejected")[: upstream_errors.MAX_ERROR_MESSAGE]
    assert f"({scrubbed})" in err.message, err.message  # quoted whole, in parentheses, by the 401's message


# --- reading the body ------------------------------------------------------------------------

EVENTS = [b'event: message_start\ndata: {"a":1}\n\n', "data: wörld 👋\n\n".encode(), b"data: 3\n\n"]


def read(body: UpstreamBody) -> list[Any]:
    """Everything the consumer gets: batches of events flattened, and None for each keep-alive."""
    out: list[Any] = []
    for batch in body:
        out.extend([None] if batch is None else batch)
    return out


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("keepalive", [None, 5.0])
def test_every_event_is_handed_over_in_order(framing, keepalive):
    body = UpstreamBody(response_of(EVENTS, framing), keepalive)
    assert read(body) == [("message_start", '{"a":1}'), ("message", "wörld 👋"), ("message", "3")]
    assert body.complete


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_mid_stream_failure_raises_network_error_after_the_events_received(framing):
    body = UpstreamBody(response_of(EVENTS[:2], framing, error=ConnectionResetError(104, "Connection reset by peer")), None)
    got: list[Any] = []
    with pytest.raises(NetworkError) as info:
        for batch in body:
            got.extend(batch)
    assert [e[0] for e in got] == ["message_start", "message"]
    assert (info.value.status, info.value.type) == (502, "network_error")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_silent_upstream_past_the_read_timeout_raises_a_timeout(framing):
    body = UpstreamBody(response_of(EVENTS[:1], framing, error=TimeoutError("timed out")), 5.0)
    with pytest.raises(UpstreamTimeout):
        read(body)


def test_a_chunked_body_cut_before_its_end_is_a_network_error_not_a_clean_end():
    body = UpstreamBody(response_of([EVENTS[0], EVENTS[1][:5]], "chunked", error=ConnectionResetError(104, "reset")), None)
    with pytest.raises(NetworkError):
        read(body)


def test_silence_longer_than_the_keepalive_yields_none():
    release = threading.Event()
    body = iter(UpstreamBody(response_of([b"data: 1\n\n", release, b"data: 2\n\n"]), 0.01))
    assert next(body) == [("message", "1")]
    assert next(body) is None  # the upstream is silent: time for a ": ping"
    release.set()
    rest = [x for x in body if x is not None]
    assert rest == [[("message", "2")]]


class _Pause(threading.Event):
    """A read that comes ``seconds`` after the one before it: a paced upstream."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep(self.seconds)
        return True


def test_a_paced_stream_gets_no_keepalives_and_leaves_the_clock_at_its_end():
    """Tokens 50 ms apart for longer than the keep-alive interval: the clock counts the silence
    from the last event handed over, so a stream that keeps coming is never pinged."""
    pieces: list[Any] = [b"data: 0\n\n"]
    for i in range(1, 8):
        pieces += [_Pause(0.05), f"data: {i}\n\n".encode()]
    body = UpstreamBody(response_of(pieces), 0.2)
    batches = list(body)
    assert None not in batches
    assert [data for batch in batches for _, data in batch] == [str(i) for i in range(8)]
    assert body not in CLOCK.bodies


def test_an_upstream_that_sends_only_comments_still_gets_the_browser_its_keepalives():
    """Comments (``: OPENROUTER PROCESSING``) are network reads but no events: the browser hears
    nothing of them, so the clock counts the time since the last event handed over, not since the
    last read (the read timeout, in turn, counts from the last read: the upstream is alive)."""
    pieces: list[Any] = [b"data: 1\n\n"]
    for _ in range(12):
        pieces += [_Pause(0.05), b": still working\n\n"]
    pieces.append(b"data: 2\n\n")
    body = UpstreamBody(response_of(pieces), 0.2)
    batches = list(body)
    assert batches.count(None) >= 2  # 0.6 s without an event: a keep-alive every 0.2 s
    assert [data for batch in batches if batch for _, data in batch] == ["1", "2"]


def test_a_stream_cut_short_leaves_the_clock():
    gate = threading.Event()
    body = UpstreamBody(response_of([b"data: 1\n\n", gate, b"data: 2\n\n"]), 5.0)
    batches = iter(body)
    assert next(batches) == [("message", "1")]
    assert body in CLOCK.bodies  # watched while it streams
    batches.close()  # the server closed the relay (the browser left)
    body.close()
    gate.set()
    assert body not in CLOCK.bodies


def test_once_the_first_token_is_out_events_that_arrived_together_come_in_one_batch():
    """One wake-up, one batch: the relay writes them to the browser in one write."""
    gate = threading.Event()
    upstream = UpstreamBody(response_of([gate, b"data: 1\n\ndata: 2\n\ndata: 3\n\n"], "length"), 5.0)
    upstream.eager = False  # as the relay sets it after its first token
    body = iter(upstream)
    gate.set()
    assert next(body) == [("message", "1"), ("message", "2"), ("message", "3")]


def test_a_first_token_that_came_with_the_rest_of_a_fast_answer_is_handed_over_before_the_rest_is_parsed() -> None:
    """Under gevent, a whole answer in one network read: until the consumer says its first token
    is out, each event comes on its own (the reader yields after each); then the rest in one batch."""
    import subprocess
    import sys
    import textwrap

    from conftest import ROOT

    code = textwrap.dedent(r"""
        from gevent import monkey; monkey.patch_all()
        import socket, sys
        sys.path.insert(0, "tests")
        from wire import frame, response_over
        from flask_llm_proxy.upstream.body import UpstreamBody
        server = socket.create_server(("127.0.0.1", 0))
        reader = socket.create_connection(server.getsockname())
        writer, _ = server.accept()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.sendall(head + b"".join(frame(b"data: %d\n\n" % i) for i in range(50)) + b"0\r\n\r\n")
        upstream = UpstreamBody(response_over(reader), None)
        sizes = []
        for batch in upstream:
            sizes.append(len(batch))
            if len(sizes) == 3:
                upstream.eager = False  # "the first token is out"
        print(sizes)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 1, 1, 47]"  # without the yields: [50], the first token after all of them


@pytest.mark.parametrize("body", [b"", b"<html>Sign in to the proxy</html>\n"], ids=["empty", "html"])
def test_a_200_without_a_single_event_is_a_protocol_error(body):
    resp = response_of([body] if body else [], "close", headers={"content-type": "text/html"})
    with pytest.raises(UpstreamError) as info:
        read(UpstreamBody(resp, None))
    assert (info.value.status, info.value.type) == (502, "upstream_protocol_error")


def test_close_while_the_reader_waits_stops_it_and_closes_the_response():
    """The browser left while the upstream is silent: close() returns at once; the reader, blocked
    in a read, is woken and closes the connection itself (never returned to the pool)."""
    gate = threading.Event()
    resp = response_of([b"data: 1\n\n", gate, b"data: 2\n\n"])
    body = UpstreamBody(resp, 5.0)
    batches = iter(body)
    assert next(batches) == [("message", "1")]
    body.close()
    gate.set()  # no socket to shut down here: the fake read returns, and the reader ends
    deadline = time.monotonic() + 5
    while resp.raw.closed is False and time.monotonic() < deadline:
        time.sleep(0.01)
    assert resp.raw.closed


def test_a_body_never_read_is_closed_by_close():
    resp = response_of([b"data: 1\n\n"])
    UpstreamBody(resp, None).close()
    assert resp.raw.closed


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [("3", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0), (" 7 ", 7.0)])
def test_retry_after_in_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "Thu, 99 Foo 2024"])
def test_retry_after_that_cannot_be_read_is_none(value):
    assert parse_retry_after(value) is None


def test_retry_after_as_an_http_date():
    value = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 115 <= parse_retry_after(value) <= 121


def test_retry_after_as_an_rfc850_date():
    value = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= parse_retry_after(value) <= 61


def test_retry_after_as_a_past_http_date_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.fixture
def non_utc_local_time() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_retry_after_as_an_asctime_date_is_read_as_utc(non_utc_local_time):
    value = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(time.time() + 60))
    assert 55 <= parse_retry_after(value) <= 61


def test_only_transient_in_stream_errors_are_worth_another_attempt() -> None:
    from flask_llm_proxy.providers.base import stream_error

    assert [stream_error(502, t, "m").transient for t in ("overloaded_error", "api_error", "rate_limit_exceeded", "server_error")] == [
        True
    ] * 4
    assert [stream_error(502, t, "m").transient for t in ("invalid_request_error", "invalid_prompt", "permission_error")] == [False] * 3


def test_the_secrets_of_a_provider_are_its_key_and_its_credential_headers_longest_first() -> None:
    from flask_llm_proxy.config import provider_secrets

    secrets = provider_secrets(
        "sk-key-1",
        {
            "Helicone-Auth": "Bearer sk-helicone-2",
            "api-key": "sk-key-1.sig-3",
            "anthropic-beta": "prompt-caching-2024-07-31",
            "OpenAI-Organization": "org-4",
        },
    )
    assert set(secrets) == {"sk-key-1", "Bearer sk-helicone-2", "sk-helicone-2", "sk-key-1.sig-3"}
    assert list(secrets) == sorted(secrets, key=len, reverse=True)
    from flask_llm_proxy.errors import scrub

    assert scrub("got sk-key-1.sig-3 and sk-helicone-2", secrets) == "got [redacted] and [redacted]"


def test_a_secret_is_also_found_as_a_json_string_writes_it() -> None:
    """An upstream echoing a credential inside JSON may escape it (PHP writes "/" as "\\/"); the
    native endpoints relay that JSON as it came, so those spellings are secrets too."""
    from flask_llm_proxy.config import provider_secrets
    from flask_llm_proxy.errors import scrub_bytes

    secrets = [s.encode() for s in provider_secrets("sk-key-1", {"api-key": "gw/Tok+en=="})]
    for echoed in (b'"gw/Tok+en=="', b'"gw\\/Tok+en=="'):
        out = scrub_bytes(b'data: {"error":{"message":"api-key: ' + echoed[1:-1] + b'"}}\n\n', secrets)
        assert b"Tok+en" not in out and b"[redacted]" in out, out


def test_every_failure_the_client_is_told_of_loses_the_providers_secrets() -> None:
    """An error event inside the stream may quote the request; Exchange.fail is on every path."""
    import time as _time

    from flask_llm_proxy.accounting.exchange import Exchange, RequestInfo
    from flask_llm_proxy.errors import UpstreamError

    ex = Exchange(RequestInfo("r1", "alice", "openai", "gpt-4o", _time.perf_counter()))
    ex.call.secrets = ("sk-secret-key-1",)
    err = UpstreamError("upstream error: the key sk-secret-key-1 is revoked")
    ex.call.fail(err)
    assert b"sk-secret-key-1" not in err.to_sse_line() and b"[redacted]" in err.to_sse_line()


# --- the adapter: requests' own, with the per-request lookups done once ---------------------------


def test_the_adapter_finds_a_urls_pool_once_per_tls_setting() -> None:
    from flask_llm_proxy.upstream.client import ProxyAdapter

    adapter = ProxyAdapter(4)
    req = requests.Request("POST", URL).prepare()
    first = adapter.get_connection_with_tls_context(req, True)
    assert adapter.get_connection_with_tls_context(req, True) is first
    assert adapter.get_connection_with_tls_context(req, False) is not first  # another TLS setting, another pool
    assert adapter.request_url(req, {}) == "/v1/messages"


def test_the_adapter_builds_a_response_without_a_cookie_jar_to_fill() -> None:
    """An upstream's Set-Cookie is never sent back: the jar stays empty (requests would fill it)."""
    from flask_llm_proxy.upstream.client import ProxyAdapter

    resp = response_of([b"data: 1\n\n"], headers={"set-cookie": "session=abc; Path=/"})
    built = ProxyAdapter(4).build_response(requests.Request("POST", URL).prepare(), resp.raw)
    assert built.status_code == 200 and built.headers["content-type"] == "text/event-stream"
    assert len(built.cookies) == 0


def test_keepalives_come_about_every_interval_from_the_shared_clock() -> None:
    release = threading.Event()
    body = iter(UpstreamBody(response_of([b"data: 1\n\n", release, b"data: 2\n\n"]), 0.2))
    assert next(body) == [("message", "1")]
    started = time.monotonic()
    assert next(body) is None and next(body) is None
    elapsed = time.monotonic() - started
    release.set()
    assert [x for x in body if x is not None] == [[("message", "2")]]
    assert 0.35 <= elapsed < 2.0, elapsed  # two intervals, each late by at most a tick (and a loaded machine)


def test_a_stream_with_a_shorter_interval_is_not_kept_waiting_by_the_clocks_longer_sleep(monkeypatch) -> None:
    """One clock per process: a stream asking for a shorter keep-alive interval than any before it
    gets its keep-alives on time, not after the sleep the clock began for the longer interval."""
    from flask_llm_proxy.upstream import body as body_module

    monkeypatch.setattr(body_module, "CLOCK", body_module.KeepaliveClock())
    slow_gate, fast_gate = threading.Event(), threading.Event()
    slow = iter(UpstreamBody(response_of([b"data: 1\n\n", slow_gate]), 8.0))  # the clock sleeps 2 s
    assert next(slow) == [("message", "1")]
    fast = iter(UpstreamBody(response_of([b"data: 1\n\n", fast_gate, b"data: 2\n\n"]), 0.2))
    assert next(fast) == [("message", "1")]
    started = time.monotonic()
    assert next(fast) is None
    elapsed = time.monotonic() - started
    fast_gate.set()
    slow_gate.set()
    assert [x for x in fast if x is not None] == [[("message", "2")]]
    assert 0.15 <= elapsed < 1.5, elapsed  # its clock may start a tick before ours; the old loop: 2 s
