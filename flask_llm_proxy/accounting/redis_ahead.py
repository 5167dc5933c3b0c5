"""The Redis store's in-flight writes: one connection per process, in-flight records sent without
waiting for their reply.

A request's in-flight record is sent before its upstream call (it is in the socket when the call
goes out) but its reply is read only with the next reply someone waits for: a final write (every
final write of the process takes this connection too). So write-ahead adds one command per request
and no round trip; Redis applies a connection's commands in order, so a final write never
overtakes its in-flight record. A begin whose reply turns out to be an error (or was lost with the
connection) is remembered: that request's final write then does not depend on it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

log = logging.getLogger("flask_llm_proxy")

SEND_WAIT = 0.1  #: seconds a request's in-flight write waits to send (another send stuck on a stalled Redis) before going without
LINK_WAIT = 2.0  #: the same while the process's connection is being made (a burst of first requests waits for it)


class AheadChannel:
    """Commands are sent under one lock, held only while sending; replies are read, in order, under
    another, by whoever waits for one (a final write), on behalf of everyone: a request's in-flight
    write never waits for another request's round trip."""

    def __init__(self, client: Any, scripts: dict[str, Any]) -> None:
        self._client = client
        self._scripts = scripts  #: name -> redis-py Script (its sha, and a way to load it)
        self._conn: Any = None
        self._pid = -1
        # gevent's locks in a patched worker: one greenlet sends while another reads
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._seq = 0  #: commands sent on this connection
        self._pending: deque[tuple[int, str | None]] = deque()  #: replies not read yet: (seq, begin id or None)
        self._replies: dict[int, Any] = {}  #: final writes' replies read by another waiter (or the error)
        self.unsure: set[str] = set()  #: begins that may not have been applied

    def _link(self) -> Any:
        if self._conn is None or self._pid != os.getpid():
            conn = self._client.connection_pool.get_connection()  # kept for this channel, never given back
            for script in self._scripts.values():  # EVALSHA below: the scripts must be there
                conn.send_command("SCRIPT", "LOAD", script.script)
                conn.read_response()
            self._conn, self._pid = conn, os.getpid()
            self._pending.clear()
        return self._conn

    def _broken(self, exc: BaseException) -> None:
        """The connection failed: what it had in flight may or may not have been applied; the final
        writes waiting for a reply get the error."""
        for seq, wal_id in self._pending:
            if wal_id is None:
                self._replies[seq] = exc
            else:
                self.unsure.add(wal_id)
        self._pending.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    def _send(self, script: str, keys: list[str], args: list[Any], begin: str | None, timeout: float) -> tuple[Any, int]:
        if timeout >= 0 and (self._conn is None or self._pid != os.getpid()):
            timeout = max(timeout, LINK_WAIT)  # the holder is connecting and loading the scripts: round trips
        if not self._send_lock.acquire(timeout=timeout):
            raise TimeoutError("the usage store's connection is busy (a stalled Redis?)")
        try:
            conn = self._link()
            try:
                conn.send_command("EVALSHA", self._scripts[script].sha, len(keys), *keys, *args)
            except Exception as exc:
                self._broken(exc)
                raise
            seq = self._seq
            self._seq += 1
            self._pending.append((seq, begin))
            return conn, seq
        finally:
            self._send_lock.release()

    def send(self, script: str, keys: list[str], args: list[Any], begin: str | None = None) -> None:
        """Send without reading the reply (a begin: ``begin`` is its id). Past ``SEND_WAIT`` for the
        connection (another greenlet stuck sending to a stalled Redis) it gives up."""
        self._send(script, keys, args, begin, SEND_WAIT)

    def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Send and wait for the reply (reading, in order, those of everything sent before it)."""
        from redis.exceptions import NoScriptError

        for attempt in (1, 2):
            conn, seq = self._send(script, keys, args, None, -1)
            try:
                return self._reply(conn, seq)
            except NoScriptError:  # the scripts were flushed: reconnecting loads them again
                with self._send_lock:
                    if self._conn is conn:
                        self._broken(ConnectionError("reloading the scripts"))
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _reply(self, conn: Any, seq: int) -> Any:
        from redis.exceptions import ResponseError

        with self._read_lock:
            while seq not in self._replies:
                if not self._pending or self._conn is not conn:
                    raise ConnectionError("the usage store's connection was lost")
                got, wal_id = self._pending[0]
                try:
                    reply: Any = conn.read_response()
                except ResponseError as exc:  # a command that failed; the connection is fine
                    reply = exc
                except Exception as exc:
                    with self._send_lock:
                        if self._conn is conn:
                            self._broken(exc)
                    continue
                self._pending.popleft()
                if wal_id is None:
                    self._replies[got] = reply
                elif isinstance(reply, Exception):
                    self.unsure.add(wal_id)
                    log.error("usage store refused an in-flight record (%s)", str(reply)[:200])
            reply = self._replies.pop(seq)
        if isinstance(reply, BaseException):
            raise reply
        return reply
