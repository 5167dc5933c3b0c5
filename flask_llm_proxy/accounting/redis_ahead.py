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

SEND_WAIT = 0.1  #: seconds a request's in-flight write waits for the connection before going without


class AheadChannel:
    """Begins are sent and not waited for; a final write reads every reply before its own."""

    def __init__(self, client: Any, scripts: dict[str, Any]) -> None:
        self._client = client
        self._scripts = scripts  #: name -> redis-py Script (its sha, and a way to load it)
        self._conn: Any = None
        self._pid = -1
        self._lock = threading.Lock()  # gevent's in a patched worker: one greenlet at a time on the connection
        self._pending: deque[str | None] = deque()  #: per reply not read yet: the begin's id (None: not a begin)
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

    def _broken(self) -> None:
        """The connection failed: what it had in flight may or may not have been applied."""
        self.unsure.update(w for w in self._pending if w is not None)
        self._pending.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    def send(self, script: str, keys: list[str], args: list[Any], begin: str | None = None) -> None:
        """Send without reading the reply (a begin: ``begin`` is its id). A request does not wait
        behind a final write stuck on a stalled Redis: past ``SEND_WAIT`` it gives up."""
        if not self._lock.acquire(timeout=SEND_WAIT):
            raise TimeoutError("the usage store's connection is busy (a stalled Redis?)")
        try:
            try:
                self._link().send_command("EVALSHA", self._scripts[script].sha, len(keys), *keys, *args)
            except Exception:
                self._broken()
                raise
            self._pending.append(begin)
        finally:
            self._lock.release()

    def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Send and wait for the reply, after reading those of everything sent before it."""
        from redis.exceptions import NoScriptError, ResponseError

        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._link()
                    conn.send_command("EVALSHA", self._scripts[script].sha, len(keys), *keys, *args)
                    self._pending.append(None)
                    return self._read_through(conn)
                except NoScriptError:  # the scripts were flushed: reconnecting loads them again
                    self._broken()
                    if attempt == 2:
                        raise
                except ResponseError:
                    raise
                except Exception:
                    self._broken()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_through(self, conn: Any) -> Any:
        """Every reply up to the last command sent (the caller's, the only one not a begin): a
        begin's error is remembered, the caller's own is raised."""
        from redis.exceptions import ResponseError

        while True:
            wal_id = self._pending.popleft()
            try:
                reply = conn.read_response()
            except ResponseError as exc:
                if wal_id is None:
                    raise
                self.unsure.add(wal_id)
                log.error("usage store refused an in-flight record (%s)", str(exc)[:200])
                continue
            if wal_id is None:
                return reply
