"""An outbound HTTP proxy for tests: what ``HTTPS_PROXY`` / ``HTTP_PROXY`` point a server at.

It speaks the two forms clients use (RFC 9110 9.3.6 and RFC 9112 3.2.2):

- ``CONNECT host:port``, answered ``200`` and then a byte tunnel (HTTPS upstreams: the TLS
  session runs end to end through it, so the proxy never sees the key or the body);
- an absolute-form request (``POST http://host:port/path HTTP/1.1``) for plain-HTTP upstreams,
  forwarded in origin form, one request at a time on a kept-alive connection, with the answer
  relayed byte by byte as it arrives (a proxy that buffered would bunch the stream).

``seen`` lists ``(method, target)`` of every request, so a test can tell that the proxy was used.
``refuse`` makes it answer ``407`` to everything (a proxy that wants credentials).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.seen: list[tuple[str, str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="forward-proxy").start()

    def __enter__(self) -> ForwardProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
        except OSError:
            pass
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream: socket.socket | None = None
        try:
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                method, target, version = head[0].split(" ", 2)
                self.seen.append((method, target))
                if self.refuse:
                    client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    upstream = socket.create_connection((host, int(port)))
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    _tunnel(client, upstream)  # a client sends nothing after CONNECT before the 200
                    return
                url = urlsplit(target)
                if upstream is None:
                    upstream = socket.create_connection((url.hostname or "", url.port or 80))
                    threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
                length = next((int(v) for k, v in (h.split(":", 1) for h in head[1:]) if k.strip().lower() == "content-length"), 0)
                body = reader.read(length) if length else b""
                origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
                upstream.sendall("\r\n".join([f"{method} {origin} {version}", *head[1:], "", ""]).encode("latin-1") + body)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    s.close()


def _read_head(reader: Any) -> list[str] | None:
    lines: list[str] = []
    while True:
        line = reader.readline(65537)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.decode("latin-1").rstrip("\r\n"))


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _tunnel(client: socket.socket, upstream: socket.socket) -> None:
    """A CONNECT tunnel: bytes both ways until either side closes."""
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join(30)
