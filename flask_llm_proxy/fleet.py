"""This process as one member of a fleet sharing a Redis: an inbox other processes write to, and a
clock that renews what this process holds there.

The queue hands a freed slot to a waiter in another process by pushing ``g|...`` to that process's
inbox; a process that wants to share an identical request's answer streaming in another process
asks it with ``w|...`` to publish it. Each process reads its inbox with one blocking ``BLPOP`` (one
Redis connection per process, however many requests wait), and on each tick renews its leases
(slots, single-flight locks) and sweeps queues it waits on. The loop runs only while something in
this process needs it (a waiter, a held slot, a flight it leads) and stops when idle, so an idle
worker costs Redis nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ._compat import spawn_reader

log = logging.getLogger("flask_llm_proxy")

PREFIX = "llm_proxy"
#: seconds a message waits in an inbox nobody reads (a process that died)
INBOX_TTL_MS = 60_000


def redis_client(url: str, *, timeout: float, connect_timeout: float = 1.0) -> Any:
    """A ``redis.Redis`` that fails fast, on a :func:`lean_pool`; the pool is made per process
    (redis-py re-makes it after a fork)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = lean_pool().from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        health_check_interval=0,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    return redis.Redis(connection_pool=pool)


_LEAN: Any = None


def lean_pool() -> Any:
    """redis-py's ``ConnectionPool`` without its check, on every command, that the connection it
    hands out holds no unread reply (``can_read()``: under gevent a socket timeout set and reset
    and a failed read, about 90 us of a 230 us round trip on loopback). redis-py itself drops a
    connection whose command failed or was interrupted while sending or reading (any exception,
    see ``read_response``), so a pooled connection holds no unread reply; a connection the server
    closed while idle (a restart, its ``timeout``, ``CLIENT KILL``) fails its next command, which
    is sent once more on a new connection (the closed one never delivered it).
    ``tests/test_queue.py`` checks both."""
    global _LEAN
    if _LEAN is None:
        from redis import ConnectionPool

        class LeanConnectionPool(ConnectionPool):
            def ensure_connection(self, connection: Any) -> None:
                connection.connect()  # a no-op when it is connected

        _LEAN = LeanConnectionPool
    return _LEAN


class Node:
    """This process on one Redis (one per URL per process, see :func:`node_for`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tick = 1.0
        self._pid = -1
        self._id = ""
        self._redis: Any = None
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._seq = 0
        self._tickers: list[Callable[[], bool]] = []
        self._running = False
        self._lock = threading.Lock()
        self._down_logged = False

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._id = os.urandom(8).hex()
            self._seq = 0
            # BLPOP and XREAD block for up to a tick: the socket timeout must outlast them
            self._redis = redis_client(self.url, timeout=self.tick + 5.0)
            self._running = False

    @property
    def id(self) -> str:
        self._check_pid()
        return self._id

    @property
    def redis(self) -> Any:
        """The client for blocking reads (``BLPOP``, ``XREAD BLOCK``): long socket timeout."""
        self._check_pid()
        return self._redis

    @staticmethod
    def inbox(node_id: str) -> str:
        return f"{PREFIX}:node:{node_id}"

    def on(self, kind: str, handler: Callable[[str], None]) -> None:
        """``handler(rest)`` for each message ``<kind>|<rest>`` sent to this process (every
        handler of the kind: several apps of one process may share this node)."""
        self._handlers.setdefault(kind, []).append(handler)

    def ticket(self) -> str:
        """A name unique in the fleet that says which process holds it: ``<node id>:<n>``."""
        self._check_pid()
        self._seq += 1
        return f"{self._id}:{self._seq}"

    def every_tick(self, fn: Callable[[], bool], tick: float | None = None) -> None:
        """``fn()`` once per tick while the loop runs; it returns whether it still has work
        (the loop stops when no ticker has any and no message came)."""
        self._tickers.append(fn)
        if tick is not None:
            self.tick = min(self.tick, tick)

    @property
    def running(self) -> bool:
        return self._running and self._pid == os.getpid()

    def wake(self) -> None:
        """Make sure the loop runs (call when this process starts to wait, hold or lead)."""
        self._check_pid()
        if self._running:
            return
        with self._lock:
            if self._running:
                return
            self._running = True
        spawn_reader(self._loop)

    def _loop(self) -> None:
        inbox = self.inbox(self._id)
        r = self._redis
        next_tick = 0.0
        while True:
            busy = False
            try:
                item = r.blpop([inbox], timeout=self.tick)
                if item is not None:
                    busy = True
                    self._dispatch(item[1])
                    more = r.lpop(inbox, 100)
                    for msg in more or ():
                        self._dispatch(msg)
                if self._down_logged:
                    self._down_logged = False
                    log.warning("fleet: Redis at the queue/cache URL is reachable again")
            except Exception as exc:  # noqa: BLE001 - Redis down: keep ticking, leases decide
                if not self._down_logged:
                    self._down_logged = True
                    log.error("fleet: Redis unreachable (%s); waiting requests fall back to their own timeouts", type(exc).__name__)
                time.sleep(self.tick)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick
                for fn in self._tickers:
                    try:
                        busy = fn() or busy
                    except Exception:  # noqa: BLE001 - one ticker must not stop the others
                        log.exception("fleet: a periodic task failed")
                if not busy:
                    # nothing needs the loop: stop (no I/O between the check and the flag, so a
                    # wake() that follows sees the flag and starts a new loop)
                    self._running = False
                    return

    def _dispatch(self, raw: bytes) -> None:
        kind, _, rest = raw.decode("utf-8", "replace").partition("|")
        for handler in self._handlers.get(kind, ()):
            try:
                handler(rest)
            except Exception:  # noqa: BLE001
                log.exception("fleet: handling a %r message failed", kind)


_nodes: dict[str, Node] = {}


def node_for(url: str) -> Node:
    """The one :class:`Node` of this process for ``url`` (the cache and the queue share it)."""
    node = _nodes.get(url)
    if node is None:
        node = _nodes[url] = Node(url)
    return node
