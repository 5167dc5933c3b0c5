"""The lean upstream client: one write per request, keep-alive reuse, stale connections replaced."""
from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from flask_llm_proxy.body import read_chunks
from flask_llm_proxy.errors import UpstreamTimeout
from flask_llm_proxy.transport import Pool, post

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


class TinyServer:
    """Answers every request with RESPONSE; ``close_after`` responses per connection, then closes."""

    def __init__(self, close_after: int, response: bytes = RESPONSE, then: bytes = b"") -> None:
        self.response = response
        self.then = then  # written 50 ms after the last answer, before closing
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            for _ in range(self.close_after):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(self.response)
            if self.then:
                threading.Event().wait(0.05)
                conn.sendall(self.then)


@pytest.fixture
def pool() -> Iterator[Pool]:
    yield Pool(maxsize=10, verify=True)


def fetch(pool: Pool, port: int) -> bytes:
    resp = post(pool, f"http://127.0.0.1:{port}/v1/messages", {"x-api-key": "k"}, b'{"a":1}', 2.0, 2.0)
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    body = b"".join(c for c in read_chunks(resp, None) if c)
    resp.finish()
    return body


def test_keep_alive_connections_are_reused(pool: Pool) -> None:
    server = TinyServer(close_after=100)
    assert [fetch(pool, server.port) for _ in range(3)] == [b"hello"] * 3
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:")
    assert server.requests[0].endswith(b'\r\n\r\n{"a":1}') and b"Content-Length: 7\r\n" in server.requests[0]


def test_a_connection_the_server_closed_while_idle_is_replaced(pool: Pool) -> None:
    """Used moments ago, so not peeked at: the request meets the EOF and is sent again on a new one."""
    server = TinyServer(close_after=1)  # closes each connection after one answer, like an idle timeout
    assert fetch(pool, server.port) == b"hello"
    threading.Event().wait(0.1)  # let the close arrive
    assert fetch(pool, server.port) == b"hello"
    assert server.connections == 2 and len(server.requests) == 2  # the dead connection got no request


def test_an_idle_timeout_408_on_a_pooled_connection_is_not_taken_for_the_answer(pool: Pool) -> None:
    """Some servers announce their idle timeout with a 408 before closing; that is no answer to us."""
    timeout_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    server = TinyServer(close_after=1, then=timeout_408)  # answers, then times out 50 ms later
    assert fetch(pool, server.port) == b"hello"
    threading.Event().wait(0.2)
    assert fetch(pool, server.port) == b"hello"  # the 408 read on the reused connection: sent again
    assert server.connections == 2


def test_a_connection_idle_for_a_while_is_peeked_at_before_reuse() -> None:
    pool = Pool(maxsize=10, verify=True, fresh_s=0.05)
    server = TinyServer(close_after=1)
    assert fetch(pool, server.port) == b"hello"
    threading.Event().wait(0.1)  # idle longer than fresh_s: the peek sees the server's EOF
    (conn,) = pool._idle[("http", "127.0.0.1", server.port)]
    assert not conn.looks_alive()
    assert pool.get(("http", "127.0.0.1", server.port)) is None  # dropped, not handed out
    assert fetch(pool, server.port) == b"hello"
    assert server.connections == 2


def test_an_unfinished_response_never_goes_back_to_the_pool(pool: Pool) -> None:
    server = TinyServer(close_after=100)
    resp = post(pool, f"http://127.0.0.1:{server.port}/x", {}, b"", 2.0, 2.0)
    resp.abort()  # the client left mid-stream
    assert fetch(pool, server.port) == b"hello"
    assert server.connections == 2


@pytest.mark.timeout(20)
def test_a_body_read_whole_gives_up_after_the_read_timeout(pool: Pool) -> None:
    """Error bodies and ``stream: false`` answers are read whole: an upstream that stops in the
    middle of one raises after the read timeout instead of holding the request forever."""
    stalls = b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"error\": "
    server = TinyServer(close_after=2, response=stalls)  # then waits for a second request: the body never ends
    resp = post(pool, f"http://127.0.0.1:{server.port}/x", {}, b"", 2.0, 0.3)
    assert resp.status_code == 500
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        resp.read(4096)
    assert time.monotonic() - started < 5


def test_a_compressed_body_is_inflated_as_it_arrives(pool: Pool) -> None:
    import gzip

    payload = b"data: one\n\ndata: two\n\n"
    packed = gzip.compress(payload)
    half = len(packed) // 2
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, packed[:half], len(packed) - half, packed[half:])
    server = TinyServer(close_after=1, response=b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    resp = post(pool, f"http://127.0.0.1:{server.port}/x", {}, b"", 2.0, 2.0)
    assert b"".join(c for c in read_chunks(resp, None) if c) == payload


def test_interim_1xx_answers_are_skipped(pool: Pool) -> None:
    server = TinyServer(close_after=1, response=b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + RESPONSE)
    assert fetch(pool, server.port) == b"hello"


CLOSE_WAKES_READER = r'''
from gevent import monkey; monkey.patch_all()
import socket, time, gevent
from flask_llm_proxy.body import read_chunks
from flask_llm_proxy.errors import ProxyError
from flask_llm_proxy.transport import Pool, post

def serve(listener):
    conn, _ = listener.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:  # a paced stream that never ends
        conn.sendall(b"9\r\ndata: x\n\n\r\n")
        gevent.sleep(0.05)

listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1)
gevent.spawn(serve, listener)
resp = post(Pool(10, True), f"http://127.0.0.1:{listener.getsockname()[1]}/x", {}, b"", 2.0, 10.0)
outcome = []
def read():
    try:
        for _ in read_chunks(resp, 5.0, 10.0):  # keep-alive 5 s, timeout 10 s
            pass
        outcome.append("ended")
    except ProxyError as exc:
        outcome.append(type(exc).__name__)
reader = gevent.spawn(read)
gevent.sleep(0.4)  # several paced reads: the reader now waits on its own watcher
conn, started = resp.conn, time.monotonic()
conn.close()  # from another greenlet, without abort()
reader.join(timeout=4)
print(outcome, round(time.monotonic() - started, 2))
'''


def test_closing_the_connection_from_another_greenlet_wakes_a_paced_reader() -> None:
    """A paced stream waits for readability on a watcher of its own; closing its connection must
    end the read at once, not at the next keep-alive or the read timeout."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CLOSE_WAKES_READER], cwd=root, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome, seconds = proc.stdout.rsplit(" ", 1)
    assert outcome == "['NetworkError']" and float(seconds) < 1.0, proc.stdout
