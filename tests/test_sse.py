"""The upstream's events as the proxy reads them (requests' ``iter_lines`` under
flask_llm_proxy/body.py, then ``sse.events``), and the contract's encoder (flask_llm_proxy/sse.py).

The network splits upstream bytes anywhere: inside an event, inside a line, between ``\\r`` and
``\\n``, inside a multi-byte UTF-8 character; servers send chunked bodies, bodies with a length and
bodies ended by closing the connection. Whatever the split and the framing, the proxy must read
exactly the events the whole stream holds (the SSE specification's "event stream interpretation").
The bodies are read by the real http.client + urllib3 + requests stack (tests/wire.py).
"""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire import FRAMINGS, response_of

from flask_llm_proxy.stream.contract import DONE, PING, encode_event, encode_token
from flask_llm_proxy.upstream.body import body_lines
from flask_llm_proxy.upstream.sse import events, parse

# --- realistic upstream streams (as in CONTRACT.md), with multi-byte text and JSON escapes ----

ANTHROPIC_EVENTS = [
    (
        "message_start",
        '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-3-5-sonnet-20241022","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}',
    ),
    ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
    ("ping", '{"type": "ping"}'),
    ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, wörld 👋"}}'),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" \\"quoted\\"\\nnew line \\u00e9 \\ud83d\\ude00"}}',
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Zür"}}',
    ),
    ("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ich\\"}"}}'),
    ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}'),
    ("message_stop", '{"type":"message_stop"}'),
]
ANTHROPIC_STREAM = "".join(f"event: {t}\ndata: {d}\n\n" for t, d in ANTHROPIC_EVENTS).encode("utf-8")

_CHUNK = '{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[{{"index":0,"delta":{delta},"finish_reason":{reason}}}]}}'
OPENAI_DATA = [
    _CHUNK.format(delta='{"role":"assistant","content":""}', reason="null"),
    _CHUNK.format(delta='{"content":"Hello, wörld 👋"}', reason="null"),
    _CHUNK.format(delta='{"content":" \\"x\\"\\n\\t日本語"}', reason="null"),
    _CHUNK.format(delta="{}", reason='"stop"'),
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}',
    "[DONE]",
]
OPENAI_EVENTS = [("message", d) for d in OPENAI_DATA]
OPENAI_STREAM = "".join(f"data: {d}\n\n" for d in OPENAI_DATA).encode("utf-8")

RESPONSES_EVENTS = [
    ("response.created", '{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}'),
    (
        "response.output_item.added",
        '{"type":"response.output_item.added","output_index":0,"item":{"type":"message","id":"msg_1","role":"assistant","content":[]}}',
    ),
    ("response.output_text.delta", '{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"Hello, wörld 👋"}'),
    ("response.output_text.delta", '{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":" \\"ok\\"\\r\\n€"}'),
    ("response.output_item.done", '{"type":"response.output_item.done","output_index":0,"item":{"type":"message","id":"msg_1"}}'),
    (
        "response.completed",
        '{"type":"response.completed","response":{"id":"resp_1","status":"completed","usage":{"input_tokens":12,"output_tokens":5,"total_tokens":17}}}',
    ),
]
RESPONSES_STREAM = "".join(f"event: {t}\ndata: {d}\n\n" for t, d in RESPONSES_EVENTS).encode("utf-8")

STREAMS = {
    "anthropic": (ANTHROPIC_STREAM, ANTHROPIC_EVENTS),
    "openai-chat": (OPENAI_STREAM, OPENAI_EVENTS),
    "responses": (RESPONSES_STREAM, RESPONSES_EVENTS),
}


def decode(*chunks: bytes, framing: str = "chunked") -> list[tuple[str, str]]:
    """The events of a body that arrives in these pieces (one chunk, or one read, each)."""
    return list(events(body_lines(response_of([c for c in chunks if c], framing))))  # an empty read is EOF


@pytest.fixture(params=FRAMINGS)
def framing(request: pytest.FixtureRequest) -> str:
    return request.param


def with_line_ends(stream: bytes, eol: bytes) -> bytes:
    return stream.replace(b"\n", eol)


@pytest.fixture(params=sorted(STREAMS))
def stream(request: pytest.FixtureRequest) -> tuple[bytes, list[tuple[str, str]]]:
    return STREAMS[request.param]


# --- whole streams --------------------------------------------------------------------------


def test_whole_stream_gives_every_event_in_order_with_its_type(stream):
    raw, expected = stream
    assert decode(raw) == expected


def test_json_of_every_event_survives_decoding(stream):
    raw, _ = stream
    for _, data in decode(raw):
        if data != "[DONE]":
            json.loads(data)


def test_multibyte_text_and_json_escapes_are_kept_verbatim():
    events = decode(ANTHROPIC_STREAM)
    texts = [json.loads(d)["delta"].get("text") for t, d in events if t == "content_block_delta"]
    assert texts[:2] == ["Hello, wörld 👋", ' "quoted"\nnew line é 😀']


# --- any split gives the same events --------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_split_at_every_byte_offset_gives_the_same_events(stream, eol, framing):
    raw, expected = stream
    raw = with_line_ends(raw, eol)
    for cut in range(len(raw) + 1):
        got = decode(raw[:cut], raw[cut:], framing=framing)
        assert got == expected, f"split at byte {cut}: {raw[max(0, cut - 10) : cut + 10]!r}"


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_one_byte_at_a_time_gives_the_same_events(stream, eol, framing):
    raw, expected = stream
    raw = with_line_ends(raw, eol)
    assert decode(*(raw[i : i + 1] for i in range(len(raw))), framing=framing) == expected


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_STREAM) * 2), max_size=40), eol=st.sampled_from([b"\n", b"\r\n", b"\r"])
)
def test_any_chunking_of_the_anthropic_stream_gives_the_same_events(cuts, eol):
    raw = with_line_ends(ANTHROPIC_STREAM, eol)
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    chunks = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    for framing in FRAMINGS:
        assert decode(*chunks, framing=framing) == ANTHROPIC_EVENTS


def test_each_event_is_handed_on_as_soon_as_its_blank_line_arrives(framing):
    """The reads after an event's end have not arrived yet (the fake socket would block): the
    event must be in hand before them."""
    gate = threading.Event()
    got = events(body_lines(response_of([b"data: one\n", b"\n", gate, b"data: two\n\n"], framing)))
    assert next(got) == ("message", "one")
    gate.set()
    assert list(got) == [("message", "two")]


def test_empty_reads_change_nothing():
    assert decode(b"data: x\r", b"", b"\n\n") == [("message", "x")]


def test_multibyte_character_split_between_chunks_is_decoded_once_whole():
    raw = "data: 👋ö\n\n".encode()
    start = raw.index("👋".encode())
    for cut in range(start + 1, start + 6):  # inside the 4-byte emoji and the 2-byte umlaut
        assert decode(raw[:cut], raw[cut:]) == [("message", "👋ö")]


# --- line endings ---------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_ending_ends_lines_and_events(eol):
    raw = b"event: a" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + eol
    assert decode(raw) == [("a", "1"), ("message", "2")]


def test_mixed_line_endings_in_one_stream():
    assert decode(b"data: 1\r\n\r\ndata: 2\r\rdata: 3\n\n") == [("message", "1"), ("message", "2"), ("message", "3")]


def test_crlf_split_across_chunks_does_not_end_the_event(framing):
    # requests' iter_lines alone turns this split into a spurious empty line (requests #2431)
    assert decode(b"event: x\r", b"\ndata: 1\r", b"\ndata: 2\r\n", b"\r\n", framing=framing) == [("x", "1\n2")]


def test_requests_iter_lines_alone_has_the_crlf_trap():
    """Why body.PromptRaw exists: should requests ever fix this, the glue can go."""
    resp = response_of([b"event: x\r", b"\ndata: 1\r\n\r\n"])
    assert list(resp.iter_lines(chunk_size=None)) == [b"event: x", b"", b"data: 1", b""]


def test_chunk_ending_in_cr_then_chunk_starting_with_a_normal_char_keeps_that_char():
    assert decode(b"data: one\r", b"data: two\r\r") == [("message", "one\ntwo")]


def test_chunk_ending_in_cr_then_chunk_starting_with_cr_is_a_blank_line():
    assert decode(b"data: one\r", b"\r") == [("message", "one")]


def test_lf_after_a_cr_is_swallowed_only_once():
    assert decode(b"data: one\r", b"\n", b"\n") == [("message", "one")]
    assert decode(b"data: one\r", b"\n", b"data: two\n\n") == [("message", "one\ntwo")]


def test_cr_cr_lf_is_two_line_ends():
    assert decode(b"data: a\r", b"\r\n") == [("message", "a")]
    assert decode(b"data: a\r\r", b"\n") == [("message", "a")]


def test_a_body_that_is_not_chunked_is_handed_on_read_by_read_not_at_its_end(framing):
    """An OpenAI-compatible server may send a body with a Content-Length or end it by closing:
    each read is handed on as it arrives (requests' own stream would wait for the whole body)."""
    gate = threading.Event()
    body = body_lines(response_of([b"data: 1\n\n", gate, b"data: 2\n\n"], framing))
    assert next(body) == b"data: 1"
    assert next(body) == b""
    gate.set()
    assert list(body) == [b"data: 2", b""]


# --- fields -----------------------------------------------------------------------------------


def test_multi_line_data_is_joined_with_newline():
    assert decode(b"data: first\ndata: second\ndata:\ndata: fourth\n\n") == [("message", "first\nsecond\n\nfourth")]


def test_comment_lines_are_ignored():
    raw = b": ping\n\n:\n:another comment\ndata: x\n: inside an event\ndata: y\n\n"
    assert decode(raw) == [("message", "x\ny")]


def test_keepalive_comments_alone_dispatch_nothing():
    assert decode(b": ping\n\n" * 3) == []


def test_unknown_event_types_are_passed_through():
    raw = b'event: content_block_future\ndata: {"a":1}\n\nevent: error\ndata: {}\n\n'
    assert decode(raw) == [("content_block_future", '{"a":1}'), ("error", "{}")]


def test_event_type_applies_to_one_event_only():
    assert decode(b"event: a\ndata: 1\n\ndata: 2\n\n") == [("a", "1"), ("message", "2")]


def test_data_without_a_space_after_the_colon():
    assert decode(b'data:{"x":1}\n\nevent:tick\ndata:2\n\n') == [("message", '{"x":1}'), ("tick", "2")]


def test_only_one_leading_space_is_removed_from_a_value():
    assert decode(b"data:  two spaces\n\n") == [("message", " two spaces")]


def test_colons_inside_the_value_are_kept():
    assert decode(b'data: {"url":"https://x.test:443/a"}\n\n') == [("message", '{"url":"https://x.test:443/a"}')]


def test_an_event_with_no_data_is_not_dispatched():
    assert decode(b"event: ping\n\n") == []
    assert decode(b"event: ping\nid: 7\nretry: 100\n\ndata: next\n\n") == [("message", "next")]


def test_an_event_without_data_does_not_leak_its_type_into_the_next_event():
    assert decode(b"event: orphan\n\ndata: x\n\n") == [("message", "x")]


def test_id_retry_and_unknown_fields_are_ignored():
    assert decode(b"id: 1\nretry: 5\nfoo: bar\ndata: x\n\n") == [("message", "x")]


def test_a_stream_cut_in_the_middle_of_an_event_gives_only_the_whole_events_before_it():
    raw = ANTHROPIC_STREAM
    ends = [i + 2 for i in range(len(raw) - 1) if raw[i : i + 2] == b"\n\n"]
    for cut in range(len(raw) + 1):
        whole = sum(1 for e in ends if e <= cut)
        assert decode(raw[:cut], framing="close") == ANTHROPIC_EVENTS[:whole], f"cut at {cut}"


def test_parse_reads_a_whole_body_as_the_stream_reader_does():
    assert parse(OPENAI_STREAM) == OPENAI_EVENTS


def test_raw_events_keep_their_own_lines_for_the_passthrough():
    raw = b": hello\n\nevent: a\nid: 3\ndata: 1\ndata:2\n\n"
    assert list(events(raw.splitlines(), raw=True)) == [("a", "1\n2", b"event: a\nid: 3\ndata: 1\ndata:2\n\n")]


# --- the contract's encoder -------------------------------------------------------------------

TRICKY = ['say "hi"', "two\nlines", "cr\rlf\r\n", "tab\t", "wörld 👋", "back\\slash", "\u2028\u2029", "\x00\x1f", "</script>", ""]


@pytest.mark.parametrize("text", TRICKY)
def test_encode_token_is_one_data_line_with_valid_json(text):
    out = encode_token(text, 7)
    assert out.startswith(b"data: ") and out.endswith(b"\n\n")
    line = out[len(b"data: ") : -2]
    assert b"\n" not in line and b"\r" not in line, "a raw line break would split the event"
    assert json.loads(line.decode("utf-8")) == {"token": text, "tokenId": 7}


@pytest.mark.parametrize("text", TRICKY)
def test_encode_token_round_trips_through_the_decoder(text):
    assert decode(encode_token(text, 0)) == [
        ("message", json.dumps({"token": text, "tokenId": 0}, ensure_ascii=False, separators=(",", ":")))
    ]


def test_encode_token_escapes_quotes_and_newlines_and_keeps_emoji_as_utf8():
    out = encode_token('a "b"\nc 👋', 3)
    assert out == 'data: {"token":"a \\"b\\"\\nc 👋","tokenId":3}\n\n'.encode()


def test_encode_event_writes_data_with_a_space_and_compact_json():
    out = encode_event({"token": "", "tokenId": 2, "isLast": True})
    assert out == b'data: {"token":"","tokenId":2,"isLast":true}\n\n'


def test_done_and_ping_are_as_the_contract_says():
    assert DONE == b"data: [DONE]\n\n"
    assert PING == b": ping\n\n"
    assert decode(PING) == []  # a keep-alive is never a data event for the client
