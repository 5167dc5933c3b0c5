"""The upstream body reader: chunked framing decoded from whatever one socket read delivered."""
from __future__ import annotations

import pytest

import ssl

from flask_llm_proxy.body import READ_SIZE, ChunkedDecoder, _queued_records
from flask_llm_proxy.errors import NetworkError

PAYLOADS = [b"event: ping\ndata: {}\n\n", "data: wörld 👋\n\n".encode(), b"x" * 300, b"\r\n\r\n"]
BODY = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in PAYLOADS) + b"0\r\n\r\n"


def decode(pieces: list[bytes]) -> tuple[bytes, bool]:
    d = ChunkedDecoder()
    out = b"".join(d.feed(p) for p in pieces)
    return out, d.done


def test_whole_body_decodes_to_the_payloads_and_ends() -> None:
    assert decode([BODY]) == (b"".join(PAYLOADS), True)


def test_every_split_point_gives_the_same_payload_and_end() -> None:
    for i in range(len(BODY) + 1):
        assert decode([BODY[:i], BODY[i:]]) == (b"".join(PAYLOADS), True), i


def test_byte_by_byte() -> None:
    assert decode([BODY[i : i + 1] for i in range(len(BODY))]) == (b"".join(PAYLOADS), True)


def test_payload_is_handed_on_before_its_chunk_is_complete() -> None:
    d = ChunkedDecoder()
    assert d.feed(b"10\r\n0123456") == b"0123456"  # no waiting for the rest of a 16-byte chunk
    assert d.feed(b"789abcdef\r\n") == b"789abcdef"
    assert not d.done


def test_chunk_extensions_and_trailers_are_accepted() -> None:
    body = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n"
    for i in range(len(body) + 1):
        assert decode([body[:i], body[i:]]) == (b"hello", True), i


def test_not_done_until_the_final_empty_line() -> None:
    assert decode([b"5\r\nhello\r\n0\r\n"]) == (b"hello", False)


def test_one_whole_chunk_per_read_gives_its_payload_each_time() -> None:
    """A paced stream: every socket read holds exactly one frame (the decoder's fast path)."""
    d = ChunkedDecoder()
    for payload in PAYLOADS:
        assert d.feed(b"%x\r\n%s\r\n" % (len(payload), payload)) == payload
    assert d.feed(b"0\r\n\r\n") == b""
    assert d.done


@pytest.mark.parametrize("size", [b"zz", b"+5", b"5_0", b"-5", b"", b" 5", b"0x5", "\u0665".encode()])
def test_malformed_size_is_a_network_error(size: bytes) -> None:
    for data in (size + b"\r\nhello\r\n", size + b"\r\nhello\r\n5\r\nworld\r\n"):
        with pytest.raises(NetworkError):
            ChunkedDecoder().feed(data)


def _reads(*results: object) -> object:
    """A TLS object's ``read``: each call hands out the next result (bytes, or an exception to raise)."""
    queue = list(results)

    def read(n: int) -> bytes:
        r = queue.pop(0)
        if isinstance(r, BaseException):
            raise r
        assert isinstance(r, bytes) and len(r) <= n
        return r
    return read


def test_queued_tls_records_are_taken_until_the_queue_is_empty() -> None:
    read = _reads(b"b", b"c", ssl.SSLWantReadError())
    assert _queued_records(read, b"a") == b"abc"


def test_whatever_ends_the_queue_is_left_for_the_next_read() -> None:
    assert _queued_records(_reads(b"b", b""), b"a") == b"ab"  # the EOF: the next recv sees it again
    assert _queued_records(_reads(ssl.SSLEOFError()), b"a") == b"a"  # and a broken connection
    assert _queued_records(_reads(ConnectionResetError()), b"a") == b"a"


def test_queued_records_stop_at_one_read_size() -> None:
    big = b"x" * (READ_SIZE - 1)
    assert _queued_records(_reads(b"y", b"never read"), big) == big + b"y"
