"""Tests of the fake LLM upstream (tests/fake_upstream.py) itself."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_upstream import (  # noqa: E402
    SIGNATURE,
    TOOL_ARGUMENTS,
    FakeUpstreamProcess,
    expected_reasoning,
    expected_text,
    make_certificate,
    reasoning_text,
    reported_usage,
    token_text,
)

KEY = "test-key"
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"Authorization": f"Bearer {KEY}"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamProcess]:
    with FakeUpstreamProcess() as up:
        yield up


@pytest.fixture()
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # no HTTP(S)_PROXY for 127.0.0.1
    yield s
    s.close()


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Spec-compliant SSE parser: any line ending, multi-line data, comments."""
    text = raw.decode("utf-8")
    events: list[dict[str, Any]] = []
    event, data, comments = "", [], []
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data or event:
                events.append({"event": event or "message", "data": "\n".join(data)})
            event, data = "", []
            continue
        if line.startswith(":"):
            comments.append(line)
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return events


def anthropic(session: requests.Session, up: FakeUpstreamProcess, prompt: str, stream: bool = True, **kw: Any) -> requests.Response:
    body = {"model": "claude-test", "max_tokens": 100, "stream": stream, "messages": [{"role": "user", "content": prompt}], **kw}
    return session.post(up.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS, stream=True, timeout=10)


def chat(session: requests.Session, up: FakeUpstreamProcess, prompt: str, stream: bool = True, **kw: Any) -> requests.Response:
    body = {"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": prompt}], **kw}
    return session.post(up.base_url + "/v1/chat/completions", json=body, headers=OPENAI_HEADERS, stream=True, timeout=10)


def responses(session: requests.Session, up: FakeUpstreamProcess, prompt: Any, stream: bool = True, **kw: Any) -> requests.Response:
    body = {"model": "gpt-test", "stream": stream, "input": prompt, **kw}
    return session.post(up.base_url + "/v1/responses", json=body, headers=OPENAI_HEADERS, stream=True, timeout=10)


def read_raw(resp: requests.Response) -> tuple[bytes, list[bytes]]:
    """Whole body and the list of chunks as received (chunked frames)."""
    chunks = list(resp.raw.stream(None, decode_content=False))
    return b"".join(chunks), chunks


def text_of(provider: str, events: list[dict[str, Any]]) -> str:
    out = []
    for ev in events:
        if ev["data"] == "[DONE]":
            continue
        d = json.loads(ev["data"])
        if provider == "anthropic" and d.get("type") == "content_block_delta" and d["delta"]["type"] == "text_delta":
            out.append(d["delta"]["text"])
        elif provider == "chat" and d.get("choices") and "content" in d["choices"][0]["delta"]:
            out.append(d["choices"][0]["delta"]["content"] or "")
        elif provider == "responses" and d.get("type") == "response.output_text.delta":
            out.append(d["delta"])
    return "".join(out)


# --------------------------------------------------------------------------
# content
# --------------------------------------------------------------------------


def test_token_text_is_varied() -> None:
    text = expected_text(12)
    assert token_text(0) == "Hello0"
    assert text.startswith("Hello0 wörld1")
    for needle in ("👋", "\n", '"', "\\", "日本語"):
        assert needle in text
    assert len({token_text(i) for i in range(100)}) == 100


# --------------------------------------------------------------------------
# wire formats
# --------------------------------------------------------------------------


def test_anthropic_stream_exact(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    r = anthropic(session, upstream, "say hi tokens=3")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["transfer-encoding"] == "chunked"
    raw, chunks = read_raw(r)
    expected = (
        "event: message_start\n"
        'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
        '"content":[],"model":"claude-test","stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
        "event: content_block_start\n"
        'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        'event: ping\ndata: {"type": "ping"}\n\n'
        + "".join(
            'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            '"delta":{"type":"text_delta","text":%s}}\n\n' % json.dumps(token_text(i), ensure_ascii=False)
            for i in range(3)
        )
        + 'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        '"stop_sequence":null},"usage":{"output_tokens":3}}\n\n'
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert raw.decode() == expected
    assert len(chunks) >= 2
    assert text_of("anthropic", parse_sse(raw)) == expected_text(3)


def test_chat_stream_exact_with_and_without_usage(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    head = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test",'
    for include in (False, True):
        kw = {"stream_options": {"include_usage": True}} if include else {}
        r = chat(session, upstream, "one two tokens=2", **kw)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw, _ = read_raw(r)
        expected = (
            f'data: {head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},'
            '"finish_reason":null}]}\n\n'
            + "".join(
                f'data: {head}"choices":[{{"index":0,"delta":{{"content":'
                f'{json.dumps(token_text(i), ensure_ascii=False)}}},"finish_reason":null}}]}}\n\n'
                for i in range(2)
            )
            + f'data: {head}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}\n\n'
            + (f'data: {head}"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}\n\n' if include else "")
            + "data: [DONE]\n\n"
        )
        assert raw.decode() == expected


def test_responses_stream(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    prompt = [{"role": "user", "content": [{"type": "input_text", "text": "hello there tokens=4"}]}]
    r = responses(session, upstream, prompt, instructions="be brief")
    assert r.status_code == 200
    raw, _ = read_raw(r)
    assert b"[DONE]" not in raw
    events = parse_sse(raw)
    types = [e["event"] for e in events]
    assert types == (
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
        + ["response.output_text.delta"] * 4
        + ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    )
    datas = [json.loads(e["data"]) for e in events]
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    assert all(d["type"] == e["event"] for d, e in zip(datas, events, strict=False))
    first_delta = raw.decode().split("event: response.output_text.delta\n", 1)[1].split("\n\n", 1)[0]
    assert first_delta == (
        'data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":0,'
        '"content_index":0,"delta":"Hello0","sequence_number":4}'
    )
    assert text_of("responses", events) == expected_text(4)
    assert datas[0]["response"]["status"] == "in_progress"
    done = datas[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == expected_text(4)
    # 2 words of instructions + 3 words of input
    assert done["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 9,
    }


def test_anthropic_thinking_stream_exact(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    """The event sequence of Anthropic's extended-thinking stream
    (https://docs.claude.com/en/docs/build-with-claude/extended-thinking#streaming-thinking)."""
    raw, _ = read_raw(anthropic(session, upstream, "tokens=2 think=3"))
    ev = "event: {}\ndata: {}\n\n".format
    expected = (
        ev(
            "message_start",
            '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
            '"content":[],"model":"claude-test","stop_reason":null,"stop_sequence":null,'
            '"usage":{"input_tokens":2,"output_tokens":1}}}',
        )
        + ev(
            "content_block_start",
            '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}',
        )
        + ev("ping", '{"type": "ping"}')
        + "".join(
            ev(
                "content_block_delta",
                '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",'
                '"thinking":%s}}' % json.dumps(reasoning_text(k), ensure_ascii=False, separators=(",", ":")),
            )
            for k in range(3)
        )
        + ev(
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"%s"}}' % SIGNATURE,
        )
        + ev("content_block_stop", '{"type":"content_block_stop","index":0}')
        + ev("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}')
        + "".join(
            ev(
                "content_block_delta",
                '{"type":"content_block_delta","index":1,"delta":{"type":"text_delta",'
                '"text":%s}}' % json.dumps(token_text(i), ensure_ascii=False),
            )
            for i in range(2)
        )
        + ev("content_block_stop", '{"type":"content_block_stop","index":1}')
        + ev(
            "message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":5}}'
        )
        + ev("message_stop", '{"type":"message_stop"}')
    )
    assert raw.decode() == expected
    assert "ü" in expected_reasoning(8) and "🤔" in expected_reasoning(8)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_chat_reasoning_deltas_and_reasoning_tokens(upstream: FakeUpstreamProcess, session: requests.Session, field: str) -> None:
    raw, _ = read_raw(chat(session, upstream, f"tokens=2 think=3 think_as={field}", stream_options={"include_usage": True}))
    datas = [json.loads(e["data"]) for e in parse_sse(raw) if e["data"] != "[DONE]"]
    deltas = [d["choices"][0]["delta"] for d in datas if d["choices"]]
    reasoning = [d for d in deltas if field in d]
    assert "".join(d[field] for d in reasoning) == expected_reasoning(3)
    if field == "reasoning_content":  # DeepSeek's form
        assert all(d["content"] is None for d in reasoning)
    assert deltas.index(reasoning[-1]) < next(i for i, d in enumerate(deltas) if d.get("content"))
    assert text_of("chat", parse_sse(raw)) == expected_text(2)
    assert datas[-1]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
        "completion_tokens_details": {"reasoning_tokens": 3},
    }


def test_responses_reasoning_summary_events(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    raw, _ = read_raw(responses(session, upstream, "tokens=2 think=3"))
    events = parse_sse(raw)
    datas = [json.loads(e["data"]) for e in events]
    assert [e["event"] for e in events][:12] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * 3,
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert datas[2]["item"] == {"id": "rs_1", "type": "reasoning", "summary": []}
    assert "".join(d["delta"] for d in datas[4:7]) == expected_reasoning(3)
    assert all(d["item_id"] == "rs_1" and d["summary_index"] == 0 for d in datas[4:7])
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    assert all(d["output_index"] == 1 for d in datas if d["type"].startswith("response.output_text"))
    assert text_of("responses", events) == expected_text(2)
    done = datas[-1]["response"]
    assert done["output"][0]["summary"] == [{"type": "summary_text", "text": expected_reasoning(3)}]
    assert done["usage"]["output_tokens"] == 5 and done["usage"]["output_tokens_details"] == {"reasoning_tokens": 3}


def test_non_streamed_answers_carry_the_reasoning(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    body = anthropic(session, upstream, "tokens=2 think=2", stream=False).json()
    assert body["content"][0] == {"type": "thinking", "thinking": expected_reasoning(2), "signature": SIGNATURE}
    assert body["usage"]["output_tokens"] == 4
    body = chat(session, upstream, "tokens=2 think=2", stream=False).json()
    assert body["choices"][0]["message"]["reasoning_content"] == expected_reasoning(2)
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    body = responses(session, upstream, "tokens=2 think=2", stream=False).json()
    assert body["output"][0]["type"] == "reasoning" and body["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}


def test_non_streamed(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    r = anthropic(session, upstream, "tokens=3", stream=False)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["type"] == "message" and body["content"] == [{"type": "text", "text": expected_text(3)}]
    assert body["usage"] == {"input_tokens": 1, "output_tokens": 3} and body["stop_reason"] == "end_turn"

    body = chat(session, upstream, "a b tokens=2 tool=1", stream=False).json()
    msg = body["choices"][0]["message"]
    assert body["object"] == "chat.completion" and msg["content"] == expected_text(2)
    assert msg["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": TOOL_ARGUMENTS}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}

    body = responses(session, upstream, "tokens=2 input_tokens=42", stream=False).json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == expected_text(2)
    assert body["usage"]["input_tokens"] == 42 and body["usage"]["total_tokens"] == 44


@pytest.mark.parametrize("provider", ["anthropic", "chat", "responses"])
def test_tool_calls(upstream: FakeUpstreamProcess, session: requests.Session, provider: str) -> None:
    call = {"anthropic": anthropic, "chat": chat, "responses": responses}[provider]
    raw, _ = read_raw(call(session, upstream, "weather? tokens=2 tool=1"))
    events = parse_sse(raw)
    assert text_of(provider, events) == expected_text(2)
    datas = [json.loads(e["data"]) for e in events if e["data"] != "[DONE]"]
    if provider == "anthropic":
        start = next(d for d in datas if d["type"] == "content_block_start" and d["index"] == 1)
        assert start["content_block"] == {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}
        frags = [
            d["delta"]["partial_json"] for d in datas if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
        ]
        assert datas[-2]["delta"]["stop_reason"] == "tool_use"
        assert datas[-2]["usage"]["output_tokens"] == 7
    elif provider == "chat":
        calls = [d["choices"][0]["delta"]["tool_calls"][0] for d in datas if d["choices"] and "tool_calls" in d["choices"][0]["delta"]]
        assert calls[0] == {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        frags = [c["function"]["arguments"] for c in calls[1:]]
        assert datas[-1]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        added = [d for d in datas if d["type"] == "response.output_item.added"][1]
        assert added["item"]["type"] == "function_call" and added["item"]["call_id"] == "call_1"
        frags = [d["delta"] for d in datas if d["type"] == "response.function_call_arguments.delta"]
        assert [d for d in datas if d["type"] == "response.function_call_arguments.done"][0]["arguments"] == TOOL_ARGUMENTS
        assert datas[-1]["response"]["output"][1]["arguments"] == TOOL_ARGUMENTS
    assert len(frags) >= 3 and "".join(frags) == TOOL_ARGUMENTS
    assert json.loads("".join(frags)) == {"city": "Oslo", "unit": "celsius"}


@pytest.mark.parametrize("provider", ["anthropic", "chat", "responses"])
@pytest.mark.parametrize(
    "knobs", ["split=3", "split=1 crlf=1", "cr=1 ping=1 unknown=1", "multiline=1 split=7", "crlf=1 multiline=1 ping=1"]
)
def test_framing_variants_parse_to_same_text(upstream: FakeUpstreamProcess, session: requests.Session, provider: str, knobs: str) -> None:
    call = {"anthropic": anthropic, "chat": chat, "responses": responses}[provider]
    raw, chunks = read_raw(call(session, upstream, f"tokens=12 {knobs}"))
    events = parse_sse(raw)
    assert text_of(provider, events) == expected_text(12)
    if "split=" in knobs:
        n = int(knobs.split("split=")[1].split()[0])
        assert max(len(c) for c in chunks) <= n
        assert len(chunks) > len(raw) // (n + 1)
    if "crlf=1" in knobs:
        assert b"\r\n\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    if "cr=1" in knobs:
        assert b"\n" not in raw and b"\r\r" in raw
    if "ping=1" in knobs:
        if provider == "anthropic":
            assert sum(e["event"] == "ping" for e in events) == 1 + 11
        else:
            assert raw.count(b": keep-alive") == 11
    if "unknown=1" in knobs and provider == "anthropic":
        assert sum(e["event"] == "future_event_type" for e in events) == 11
    if "multiline=1" in knobs and provider == "anthropic":
        assert re.search(rb'data: \{"type":"content_block_delta",(\r\n|\r|\n)data: "index":0', raw)


def test_split_cuts_multibyte_characters(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    raw, chunks = read_raw(anthropic(session, upstream, "tokens=11 split=1"))
    assert all(len(c) == 1 for c in chunks)
    assert len(raw) > len(raw.decode())  # multi-byte characters went out byte by byte


# --------------------------------------------------------------------------
# errors and failure modes
# --------------------------------------------------------------------------


def test_auth(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    r = session.post(
        upstream.base_url + "/v1/messages",
        json={"stream": True, "messages": []},
        headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 401
    assert r.json() == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    r = session.post(upstream.base_url + "/v1/messages", json={"messages": []}, headers={"x-api-key": KEY})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    for path in ("/v1/chat/completions", "/v1/responses"):
        r = session.post(upstream.base_url + path, json={"stream": True}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert session.get(upstream.base_url + "/nope").status_code == 404


def test_status_sequence_per_id(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    prompt = "id=seq1 status=500,529,429 retry_after=2 tokens=2"
    r = anthropic(session, upstream, prompt)
    assert r.status_code == 500
    assert r.json() == {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    assert r.headers["retry-after"] == "2"
    r = anthropic(session, upstream, prompt)
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    r = anthropic(session, upstream, prompt)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    r = anthropic(session, upstream, prompt)
    assert r.status_code == 200
    assert text_of("anthropic", parse_sse(read_raw(r)[0])) == expected_text(2)
    # another id has its own counter
    r = chat(session, upstream, "id=seq2 status=429")
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" not in r.headers
    assert chat(session, upstream, "id=seq2 status=429").status_code == 200
    recs = upstream.requests(id="seq1")
    assert [x["status"] for x in recs] == [500, 529, 429, 200]
    assert [x["attempt"] for x in recs] == [0, 1, 2, 3]
    assert recs[-1]["completed"] and recs[0]["outcome"] == "http_error"
    upstream.reset()
    assert upstream.requests() == []
    assert anthropic(session, upstream, prompt).status_code == 500


def test_echo_headers(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    r = chat(session, upstream, "id=echo status=401 echo_headers=1")
    assert r.status_code == 401
    assert f"Authorization: Bearer {KEY}" in r.json()["error"]["message"]


def test_drop_after_truncates(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    r = anthropic(session, upstream, "id=drop tokens=10 drop_after=3")
    assert r.status_code == 200
    got = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in r.iter_content(None):
            got += chunk
    events = parse_sse(bytes(got))
    assert text_of("anthropic", events) == expected_text(3)
    assert events[-1]["event"] == "content_block_delta"
    rec = upstream.wait_for_request("drop", lambda x: x["outcome"] == "dropped")
    assert rec["tokens_sent"] == 3 and not rec["completed"] and not rec["client_closed"]


@pytest.mark.parametrize("provider", ["anthropic", "chat", "responses"])
def test_error_after(upstream: FakeUpstreamProcess, session: requests.Session, provider: str) -> None:
    call = {"anthropic": anthropic, "chat": chat, "responses": responses}[provider]
    raw, _ = read_raw(call(session, upstream, "tokens=5 error_after=2"))
    events = parse_sse(raw)
    assert text_of(provider, events) == expected_text(2)
    last = events[-1]
    if provider == "anthropic":
        assert last == {"event": "error", "data": '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'}
    elif provider == "chat":
        assert raw.endswith(b'data: {"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}\n\n')
    else:
        assert last["event"] == "error"
        assert json.loads(last["data"]) == {
            "type": "error",
            "code": "server_error",
            "message": "The server had an error",
            "param": None,
            "sequence_number": 6,
        }


def test_client_close_during_hang_is_recorded(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    r = chat(session, upstream, "id=hang1 tokens=10 hang_after=2")
    assert r.status_code == 200
    it = r.raw.stream(None, decode_content=False)
    got = b""
    while got.count(b"data: ") < 3:
        got += next(it)
    t0 = time.monotonic()
    r.close()
    rec = upstream.wait_for_request("hang1", lambda x: x["client_closed"], timeout=2)
    assert time.monotonic() - t0 < 1.0
    assert rec["tokens_sent"] == 2 and not rec["completed"] and rec["outcome"] == "client_closed"
    assert rec["closed_after_ms"] is not None and rec["closed_after_ms"] >= 0


def test_hang_headers_and_close_with_raw_socket(upstream: FakeUpstreamProcess) -> None:
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "id=hang2 hang=headers"}]})
    req = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nanthropic-version: 1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", upstream.port))
    sock.sendall(req)
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(100)
    upstream.wait_for_request("hang2", lambda x: x["outcome"] == "hung")
    sock.close()
    rec = upstream.wait_for_request("hang2", lambda x: x["client_closed"], timeout=1)
    assert rec["status"] is None and rec["tokens_sent"] == 0 and rec["closed_after_ms"] > 0


def test_pacing(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    t0 = time.monotonic()
    raw, _ = read_raw(chat(session, upstream, "tokens=5 pace_ms=40 first_ms=100 headers_ms=50"))
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 1.5
    assert text_of("chat", parse_sse(raw)) == expected_text(5)


# --------------------------------------------------------------------------
# HTTP details
# --------------------------------------------------------------------------


def test_keep_alive_and_chunked_request_body(upstream: FakeUpstreamProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", upstream.port))
    f = sock.makefile("rb")
    body = json.dumps({"model": "m", "stream": False, "messages": [{"role": "user", "content": "id=ka tokens=2"}]}).encode()
    for i in range(3):
        if i == 1:  # chunked request body, split in two chunks
            half = len(body) // 2
            payload = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            payload, framing = body, b"Content-Length: %d\r\n" % len(body)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\n"
            + framing
            + b"\r\n"
            + payload
        )
        status = f.readline()
        assert status == b"HTTP/1.1 200 OK\r\n"
        headers = {}
        while (line := f.readline()) != b"\r\n":
            k, _, v = line.decode().partition(":")
            headers[k.lower()] = v.strip()
        data = json.loads(f.read(int(headers["content-length"])))
        assert data["choices"][0]["message"]["content"] == expected_text(2)
    sock.close()
    recs = upstream.requests(id="ka")
    assert len(recs) == 3 and recs[1]["headers"]["transfer-encoding"] == "chunked"
    assert recs[1]["body"]["messages"][0]["content"] == "id=ka tokens=2"


def test_request_record_and_usage(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    body = {
        "model": "claude-test",
        "max_tokens": 5,
        "stream": True,
        "system": "sys words here",
        "messages": [
            {"role": "user", "content": "earlier turn"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": "id=rec1 tokens=4"}]},
        ],
    }
    r = session.post(upstream.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS, stream=True)
    read_raw(r)
    (rec,) = upstream.requests(id="rec1")
    assert rec["path"] == "/v1/messages" and rec["body"] == body and rec["status"] == 200
    assert rec["headers"]["x-api-key"] == KEY
    assert rec["tokens_sent"] == 4 and rec["completed"] and not rec["client_closed"]
    assert rec["usage"] == {"input_tokens": 8, "output_tokens": 4} == reported_usage("anthropic", body)
    assert rec["usage_sent"] and rec["closed_after_ms"] is None


def test_session_reuses_connection(upstream: FakeUpstreamProcess, session: requests.Session) -> None:
    for _ in range(3):
        read_raw(chat(session, upstream, "id=reuse tokens=3 pace_ms=1"))
    recs = upstream.requests(id="reuse")
    assert len(recs) == 3 and len({r["conn"] for r in recs}) == 1
    assert all(r["completed"] and r["tokens_sent"] == 3 for r in recs)


def test_health(upstream: FakeUpstreamProcess) -> None:
    assert upstream.health()


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available")
def test_tls(tmp_path: Path, session: requests.Session) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    make_certificate(str(cert), str(key), san="IP:127.0.0.1")
    with FakeUpstreamProcess(tls=(str(cert), str(key)), key="tls-secret") as up:
        assert up.base_url.startswith("https://127.0.0.1:")
        body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "id=tls tokens=6"}]}
        r = session.post(
            up.base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer tls-secret"}, stream=True, verify=str(cert)
        )
        assert r.status_code == 200
        assert text_of("chat", parse_sse(read_raw(r)[0])) == expected_text(6)
        # client close over TLS is noticed too
        body["messages"][0]["content"] = "id=tls2 hang_after=1"
        r = session.post(
            up.base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer tls-secret"}, stream=True, verify=str(cert)
        )
        next(r.raw.stream(None, decode_content=False))
        r.close()
        assert up.wait_for_request("tls2", lambda x: x["client_closed"], timeout=2)
        assert [x["completed"] for x in up.requests(id="tls")] == [True]
        with pytest.raises(requests.exceptions.SSLError):
            session.get(up.base_url + "/_fake/health")  # default CA bundle does not trust it


def test_anthropic_bearer_flag(session: requests.Session) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "tokens=2"}]}
    headers = {"Authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    with FakeUpstreamProcess(extra_args=["--anthropic-bearer"]) as up:
        r = session.post(up.base_url + "/v1/messages", json=body, headers=headers)
        assert r.status_code == 200 and r.json()["content"][0]["text"] == expected_text(2)
        assert session.post(up.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS).status_code == 200
