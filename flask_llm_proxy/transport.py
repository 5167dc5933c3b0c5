"""A lean HTTP/1.1 client for the one request shape the proxy makes: POST a JSON body from
configuration, read the answer as it streams.

Why not ``requests`` here: measured against the fake upstream on loopback, ``HTTPAdapter.send``
spends about 1 ms of CPU per request in preparation, urllib3 bookkeeping and e-mail header
parsing, while the whole round trip on a bare socket takes 0.3-0.5 ms; that millisecond was most
of the proxy's added time to first token. This client writes the request in one ``sendall``,
parses the status line and headers itself, keeps connections per host in a LIFO pool, and hands
the socket file to :mod:`body` for the streamed body. It does TLS with the system CA store or
``REQUESTS_CA_BUNDLE``. Hosts behind an HTTP(S) proxy from the environment keep using
``requests`` (see :class:`upstream.UpstreamClient`).
"""
from __future__ import annotations

import _socket
import functools
import ipaddress
import os
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

MAX_HEADER_LINES = 200
MAX_LINE = 65536


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout."""


class ReadTimeout(TimeoutError):
    """Connected, but no answer within the read timeout."""


class StaleConnection(Exception):
    """A pooled connection the server had already closed: try again on a new one."""


class Conn:
    __slots__ = ("sock", "fp", "key", "idle_since")

    def __init__(self, sock: socket.socket, key: tuple[str, str, int]) -> None:
        self.sock = sock
        self.fp = sock.makefile("rb")
        self.key = key
        self.idle_since = 0.0

    def close(self) -> None:
        try:
            self.fp.close()
        finally:
            self.sock.close()

    def looks_alive(self) -> bool:
        """An idle keep-alive connection has nothing to read; EOF or bytes mean it is unusable.

        Peeks at the file descriptor itself (not through TLS or gevent, which would block).
        """
        raw = getattr(self.sock, "_sock", self.sock)
        if raw is not self.sock and raw.gettimeout() == 0.0:
            return _nothing_to_read(raw)  # gevent (plain or TLS): the descriptor is non-blocking already
        previous = self.sock.gettimeout()
        try:
            self.sock.settimeout(0.0)  # a socket with a timeout would wait that long for readability
            return _nothing_to_read(raw)
        finally:
            try:
                self.sock.settimeout(previous)
            except OSError:
                pass


def _nothing_to_read(raw: Any) -> bool:
    try:
        _socket.socket.recv(raw, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except (OSError, ValueError, TypeError):
        return False
    return False  # b"" (closed by the server) or unexpected bytes


class LeanResponse:
    """What the rest of the proxy needs of a response: status, headers, the socket file."""

    __slots__ = ("status_code", "headers", "conn", "pool", "chunked", "length", "reusable", "complete", "read_timeout")

    def __init__(self, status: int, headers: dict[str, str], conn: Conn, pool: Pool, read_timeout: float | None = None) -> None:
        self.status_code = status
        self.read_timeout = read_timeout  # for the whole-body reads below, as for the stream's
        self.headers = headers  # lower-case names
        self.conn = conn
        self.pool = pool
        te = headers.get("transfer-encoding", "").lower()
        self.chunked = "chunked" in te
        cl = headers.get("content-length")
        self.length: int | None = int(cl) if cl and cl.isdigit() and not self.chunked else None
        self.reusable = headers.get("connection", "").lower() != "close" and (self.chunked or self.length is not None)
        self.complete = False

    @property
    def raw(self) -> LeanResponse:
        return self  # error_from_response reads ``resp.raw.read(n)``, as with requests

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        """Read the body (at most ``amt`` bytes) without keep-alives: error bodies and ``stream:
        false`` answers. An upstream silent for the read timeout raises :class:`UpstreamTimeout`."""
        from .body import read_chunks

        out, size = [], 0
        for chunk in read_chunks(self, None, self.read_timeout):  # type: ignore[arg-type]
            if chunk:
                out.append(chunk)
                size += len(chunk)
                if amt is not None and size >= amt:
                    break
        return b"".join(out)[:amt] if amt is not None else b"".join(out)

    @property
    def content(self) -> bytes:
        data = self.read()
        self.finish()
        return data

    def mark_complete(self) -> None:
        self.complete = True

    def finish(self) -> None:
        """Body read to its end: back to the pool; otherwise the connection is dropped."""
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        if self.complete and self.reusable:
            self.pool.put(conn)
        else:
            conn.close()

    def abort(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        if self.complete:
            self.finish()
        else:
            self.abort()


class Pool:
    """Idle connections per (scheme, host, port), most recently used first.

    Lock-free: ``list.pop``/``append`` and ``dict.setdefault`` are atomic, so threads (the Flask
    development server) and greenlets can share it without the cost of a lock per request.

    A connection idle for ``fresh_s`` seconds or longer is peeked at before reuse (a server that
    closed it has left an EOF to read); one used more recently is taken as it is, which saves a
    system call and an exception per request on a busy worker. Servers keep idle connections for
    seconds to minutes, and if one did close sooner, :func:`post` sees the EOF instead of an answer
    and sends once more on a new connection.
    """

    def __init__(self, maxsize: int, verify: str | bool, fresh_s: float = 1.0) -> None:
        self.maxsize = maxsize
        self.verify = verify
        self.fresh_s = fresh_s
        self._idle: dict[tuple[str, str, int], list[Conn]] = {}
        self._ssl: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self.verify is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                cafile = self.verify if isinstance(self.verify, str) else _default_cafile()
                ctx = ssl.create_default_context(cafile=cafile)
            self._ssl = ctx
        return self._ssl

    def get(self, key: tuple[str, str, int]) -> Conn | None:
        idle = self._idle.get(key)
        while idle:
            try:
                conn = idle.pop()  # atomic: no lock needed (a gevent lock costs a greenlet-aware acquire)
            except IndexError:  # another thread took the last one
                return None
            if time.monotonic() - conn.idle_since < self.fresh_s or conn.looks_alive():
                return conn
            conn.close()
        return None

    def put(self, conn: Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < self.maxsize:  # two threads may both pass: one connection over, harmless
            conn.idle_since = time.monotonic()
            idle.append(conn)
            return
        conn.close()

    def connect(self, key: tuple[str, str, int], connect_timeout: float) -> Conn:
        scheme, host, port = key
        try:
            sock = _connect(host, port, connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self.ssl_context().wrap_socket(sock, server_hostname=host)
        except socket.timeout:
            raise ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        return Conn(sock, key)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """An IP literal needs no resolver (gevent's runs getaddrinfo on its thread pool)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _default_cafile() -> str | None:
    try:
        import certifi  # a dependency of requests: the same CA bundle requests would use

        return certifi.where()
    except ImportError:  # pragma: no cover
        return None


@functools.lru_cache(maxsize=256)  # URLs come from configuration: a handful per process
def split_url(url: str) -> tuple[tuple[str, str, int], str, str]:
    """(pool key, path with query, Host header) for an upstream URL from configuration."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname or ""
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
    host_header = host if default else f"{host}:{port}"
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host_header = f"[{host}]" if default else f"[{host}]:{port}"
    return (scheme, host, port), path, host_header


def _read_head(fp: Any) -> tuple[int, dict[str, str]]:
    line = fp.readline(MAX_LINE)
    if not line:
        raise StaleConnection()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ConnectionError("the upstream did not answer with HTTP")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = fp.readline(MAX_LINE)
        if line in (b"\r\n", b"\n", b""):
            if not line:
                raise ConnectionError("the upstream closed the connection inside its headers")
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise ConnectionError("the upstream sent too many header lines")


def post(pool: Pool, url: str, headers: dict[str, str], body: bytes, connect_timeout: float, read_timeout: float) -> LeanResponse:
    """POST and read the status line and headers; the body is left for :mod:`body` to stream.

    Raises :class:`ConnectTimeout`, :class:`ReadTimeout`, ``ssl.SSLError``, or ``OSError``/
    ``ConnectionError`` for a failed connection; a stale pooled connection (closed, or answering
    408 for its idle timeout) is retried once, on a new connection.
    """
    key, path, host_header = split_url(url)
    head = [f"POST {path} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    for attempt in (0, 1):
        conn = pool.get(key) if attempt == 0 else None
        reused = conn is not None
        if conn is None:
            conn = pool.connect(key, connect_timeout)
        try:
            conn.sock.settimeout(read_timeout)
            conn.sock.sendall(request)
            status, resp_headers = _read_head(conn.fp)
            while 100 <= status < 200:  # interim answers (103 Early Hints ...) precede the real one
                status, resp_headers = _read_head(conn.fp)
        except (StaleConnection, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            if reused:
                continue  # the server closed an idle keep-alive connection: not a failure
            if isinstance(exc, StaleConnection):
                raise ConnectionError("the upstream closed the connection without answering") from None
            raise
        except socket.timeout:
            conn.close()
            raise ReadTimeout("the upstream did not answer within the read timeout") from None
        except BaseException:
            conn.close()
            raise
        if status == 408 and reused:
            # A server that timed out an idle keep-alive connection may say so before closing it;
            # that answer was written before our request arrived (HTTP clients resend, as here).
            conn.close()
            continue
        return LeanResponse(status, resp_headers, conn, pool, read_timeout)
    raise ConnectionError("unreachable")  # pragma: no cover


def env_verify() -> str | bool:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
