"""Where stored answers live: this process's memory (an LRU bounded in bytes) or Redis (a fleet).

A store answers ``get(key)`` and ``put(key, blob, ttl)``; a Redis that fails raises, and the cache
(:mod:`flask_llm_proxy.cache`) turns that into a bypass, never into an error for the client.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

from ..fleet import PREFIX, redis_client

#: memory:// default size: answers of all keys together, per process
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024


class MemoryStore:
    """Per process: least recently used answers go first once ``capacity`` bytes are held."""

    shared = False

    def __init__(self, capacity: int = DEFAULT_MEMORY_BYTES) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        query = parse_qs(url.partition("?")[2])
        return cls(int(query["size"][-1]) if "size" in query else DEFAULT_MEMORY_BYTES)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= time.monotonic():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: str, blob: bytes, ttl: float) -> None:
        if len(blob) > self.capacity:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (time.monotonic() + ttl, blob)
            self.size += len(blob)
            while self.size > self.capacity:
                self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, blob = self._items.pop(key)
        self.size -= len(blob)


class RedisStore:
    """``GET`` / ``SET PX`` under ``llm_proxy:cache:<sha256>``. Short timeouts: a slow Redis is a
    bypassed cache, not a slow answer."""

    shared = True

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
        self._timeout = timeout
        self._redis: Any = None

    @property
    def redis(self) -> Any:
        if self._redis is None:
            self._redis = redis_client(self.url, timeout=self._timeout, connect_timeout=self._timeout)
        return self._redis

    @staticmethod
    def key(digest: str) -> str:
        return f"{PREFIX}:cache:{digest}"

    def get(self, key: str) -> bytes | None:
        return self.redis.get(self.key(key))

    def put(self, key: str, blob: bytes, ttl: float) -> None:
        self.redis.set(self.key(key), blob, px=int(ttl * 1000))


def open_store(url: str) -> MemoryStore | RedisStore:
    if url.startswith("memory://"):
        return MemoryStore.from_url(url)
    return RedisStore(url)
