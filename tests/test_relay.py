"""The per-token writer and the exactly-once accounting, without any network."""

from __future__ import annotations

import json
import time
from typing import Any

from flask_llm_proxy.accounting.exchange import Exchange, RequestInfo, UsageRecord
from flask_llm_proxy.providers.base import ToolCall, Translator
from flask_llm_proxy.stream.relay import StreamBody, relay


def exchange(records: list[UsageRecord]) -> Exchange:
    ex = Exchange(RequestInfo("rid-1", "alice", "anthropic", "claude-x", time.perf_counter(), input_chars=400))
    ex.on_finalize(records.append)
    return ex


def events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            out.append("[DONE]" if block == "data: [DONE]" else json.loads(block[6:]))
        elif block.startswith("error: "):
            out.append(("error", json.loads(block[7:])))
    return out


def test_events_are_numbered_without_gaps_and_end_with_one_last_event_and_done() -> None:
    records: list[UsageRecord] = []
    ex, t = exchange(records), Translator()
    t.done, t.finish_reason = True, "stop"
    t.usage.input_tokens, t.usage.output_tokens, t.usage.reported = 9, 3, True
    ex.call.translator = t
    out = events(b"".join(relay(ex, iter([["Hel", "lo"], None, [ToolCall("c1", "f", {"a": 1})]]), t)))
    assert [e["tokenId"] for e in out[:-1]] == [0, 1, 2, 3]
    assert out[0]["isFirst"] is True and "ttfbMs" in out[0] and "isFirst" not in out[1]
    assert out[2] == {"token": "", "tokenId": 2, "toolCall": {"id": "c1", "name": "f", "arguments": {"a": 1}}}
    assert out[3] == {"token": "", "tokenId": 3, "isLast": True, "finishReason": "stop", "usage": {"inputTokens": 9, "outputTokens": 3}}
    assert out[4] == "[DONE]"


def test_a_keepalive_is_a_comment_never_a_data_line() -> None:
    t = Translator()
    t.done = True
    raw = b"".join(relay(exchange([]), iter([None, ["x"]]), t))
    blocks = raw.decode().split("\n\n")
    # the silence is one SSE comment and nothing else: no data line rides along with it
    assert blocks[0] == ": ping"
    # so the next block is already the first token, numbered 0 (the ping consumed no tokenId)
    assert blocks[1].startswith("data: ") and "\n" not in blocks[1], blocks[1]
    first = json.loads(blocks[1][6:])
    assert (first.get("tokenId"), first.get("token"), first.get("isFirst")) == (0, "x", True), blocks[:2]
    # then the last event and [DONE], and nothing else
    assert blocks[2].startswith("data: ") and json.loads(blocks[2][6:])["isLast"] is True
    assert blocks[3:] == ["data: [DONE]", ""]


def test_a_stream_that_ends_without_its_final_event_is_an_error_not_a_success() -> None:
    records: list[UsageRecord] = []
    ex, t = exchange(records), Translator()
    ex.call.translator = t
    body = StreamBody(relay(ex, iter([["a"], ["b"]]), t), ex.finalize)
    out = events(b"".join(body))
    body.close()
    assert out[-1][0] == "error" and out[-1][1]["code"] == "NETWORK_ERROR"
    assert "[DONE]" not in out
    assert len(records) == 1 and records[0].error_type == "network_error"
    assert records[0].estimated and records[0].output_tokens == 2 and records[0].input_tokens == 100  # 400 chars / 4


def test_a_body_closed_before_its_first_byte_is_accounted_once_as_client_closed() -> None:
    records: list[UsageRecord] = []
    ex, t = exchange(records), Translator()
    ex.call.translator = t
    body = StreamBody(relay(ex, iter([["never sent"]]), t), ex.finalize)
    body.close()  # the browser left before the server iterated the body
    body.close()
    ex.finalize()
    assert len(records) == 1
    assert records[0].error_type == "client_closed" and records[0].status == 200


def test_the_native_passthrough_relays_whole_events_and_redacts_a_key_however_the_reads_split() -> None:
    """The native endpoints relay the upstream's events as they are, event by event: an error event
    quoting the key has it redacted even when the key arrives in two reads, a keep-alive due in
    the middle of an event waits for its end, and the events come out in their order."""
    import threading

    from wire import response_of

    from flask_llm_proxy.providers.anthropic import AnthropicTranslator
    from flask_llm_proxy.stream.contract import PING
    from flask_llm_proxy.stream.passthrough import passthrough
    from flask_llm_proxy.upstream.body import UpstreamBody

    secret = "sk-ant-api03-secret-0123456789abcdef"
    ok = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    bad = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"x-api-key: ' + secret.encode() + b'"}}\n\n'
    stream = ok + bad
    for cut in range(1, len(stream)):
        gate = threading.Event()
        ex = exchange([])
        ex.call.secrets = (secret,)
        body = UpstreamBody(response_of([stream[:cut], gate, stream[cut:]], "length"), 0.02, raw=True)
        out = []
        for part in passthrough(ex, body, "messages", AnthropicTranslator()):
            out.append(part)
            gate.set()  # the second read arrives once the first was relayed (or a keep-alive was due)
        text = b"".join(p for p in out if p != PING)
        assert text == ok + bad.replace(secret.encode(), b"[redacted]"), cut
        assert PING not in text, cut  # never inside an event
        assert ex.call.error is not None and ex.call.error.type == "upstream_overloaded", cut


def test_the_relay_and_the_native_passthrough_end_the_readers_eager_hand_over_at_their_first_token() -> None:
    """The reader yields after each event only until the first token is out (a fast answer's first
    token is written before the rest is parsed); from then on it batches what arrived together."""
    import threading

    from wire import response_of

    from flask_llm_proxy.providers.anthropic import AnthropicTranslator
    from flask_llm_proxy.stream.passthrough import passthrough
    from flask_llm_proxy.stream.relay import upstream_items
    from flask_llm_proxy.upstream.body import UpstreamBody

    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
        b'"content":[],"model":"m","usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    )
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    end = b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'

    # the relay (neutral endpoints): its first write is the first token
    gate = threading.Event()
    ex, t = exchange([]), AnthropicTranslator()
    items = upstream_items(ex, response_of([start, gate, delta, end]), t, None)
    body = ex.call.resp
    assert type(body) is UpstreamBody and body.eager
    parts = relay(ex, items, t)
    gate.set()
    next(parts)  # the first token's event
    assert body.eager is False
    list(parts)

    # the passthrough (native endpoints): message_start goes out first, and is no token; the same
    # when it reads the body through the response cache's tee (an answer being stored)
    from flask_llm_proxy.cache.tee import Tee

    class Flight:
        watched = False
        open = add = staticmethod(lambda *a: None)

    class Turn:
        flight = Flight()
        complete = failed = staticmethod(lambda *a: None)

    for through_tee in (False, True):
        gate = threading.Event()
        ex, t = exchange([]), AnthropicTranslator()
        body = ex.call.resp = UpstreamBody(response_of([start, gate, delta, end]), None, raw=True)
        out = passthrough(ex, Tee(Turn(), ex, body, t, raw=True, feed=t.feed) if through_tee else body, "messages", t)
        assert next(out) == start and body.eager
        gate.set()
        assert next(out).startswith(delta) and body.eager is False
        list(out)
