"""The usage ledger: the store ``LLM_PROXY_USAGE_STORE`` names."""

from __future__ import annotations

import os

from .redis_store import RedisStore
from .sqlite_store import SQLiteStore
from .store import NullStore, Store


def open_store(uri: str | None, instance_path: str, stream_maxlen: int | None = None) -> Store:
    """``None`` -> SQLite in the instance folder; ``sqlite:///path``; ``redis://...``; ``none``.
    ``stream_maxlen`` (``LLM_PROXY_USAGE_STREAM_MAXLEN``) bounds the Redis store's stream."""
    if uri in (None, ""):
        return SQLiteStore(os.path.join(instance_path, "llm_proxy_usage.sqlite3"))
    if uri == "none":
        return NullStore()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not os.path.isabs(path):
            path = os.path.join(instance_path, path)
        return SQLiteStore(path)
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(uri, stream_maxlen=stream_maxlen)
    raise ValueError(f"unsupported usage store {uri!r}")
