"""Where usage records go: SQLite (one host) or Redis (a fleet).

Both stores answer the two questions the proxy asks: "what did this identity spend in the current
day and month" (budgets, before the upstream call) and "list the records since T" (the CLI).
SQLite calls block, so under gevent they run on the hub's thread pool, never on the hub itself;
Redis calls go through gevent-patched sockets.
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from .exchange import UsageRecord

log = logging.getLogger("flask_llm_proxy")

FIELDS = (
    "request_id", "timestamp", "identity", "provider", "model", "endpoint", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "estimated", "cost_usd", "status", "error_type", "ttfb_ms",
    "duration_ms", "retries", "finish_reason", "cached",
)


def day_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def month_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m")


def period_starts(ts: float) -> tuple[float, float, float, float]:
    """(day start, next day start, month start, next month start) in UTC epoch seconds."""
    now = datetime.fromtimestamp(ts, timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)
    return day.timestamp(), day.timestamp() + 86400, month.timestamp(), next_month.timestamp()


class Spend(dict):  # {"daily_usd", "daily_tokens", "monthly_usd", "monthly_tokens"}
    pass


class Store:
    """Interface of a usage store."""

    blocking = False

    def write(self, record: UsageRecord) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def spend(self, identity: str, now: float) -> Spend:  # pragma: no cover
        raise NotImplementedError

    def records(self, since: float) -> Iterator[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


class NullStore(Store):
    def write(self, record: UsageRecord) -> None:
        pass

    def spend(self, identity: str, now: float) -> Spend:
        return Spend(daily_usd=0.0, daily_tokens=0, monthly_usd=0.0, monthly_tokens=0)

    def records(self, since: float) -> Iterator[dict[str, Any]]:
        return iter(())


# One row per upstream request. The request id is the client's X-Request-ID when it sent a valid
# one, so it is no key: a repeated id must not hide a request from the ledger and its budgets.
_TABLE = """
CREATE TABLE IF NOT EXISTS llm_proxy_usage (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL, timestamp REAL NOT NULL, identity TEXT NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL, cost_usd REAL, status INTEGER NOT NULL, error_type TEXT,
    ttfb_ms REAL, duration_ms REAL, retries INTEGER NOT NULL, finish_reason TEXT, cached INTEGER NOT NULL
)"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_identity_ts ON llm_proxy_usage (identity, timestamp)",
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_ts ON llm_proxy_usage (timestamp)",
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_request_id ON llm_proxy_usage (request_id)",
)


_INSERT = f"INSERT INTO llm_proxy_usage ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"


class SQLiteStore(Store):
    """stdlib sqlite3 in WAL mode: many readers and one writer at a time across processes."""

    blocking = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._pid = os.getpid()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        conn = self._connect()
        try:
            conn.execute(_TABLE)
            # A ledger made by an earlier version has the request id as its key. It is not moved
            # (on a large file that would hold every worker's start past gunicorn's timeout): a
            # repeated id is written with a suffix instead (see write).
            self._keyed = any(col[1] == "request_id" and col[5] for col in conn.execute("PRAGMA table_info(llm_proxy_usage)"))
            for index in _INDEXES[:2] if self._keyed else _INDEXES:
                conn.execute(index)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def write(self, record: UsageRecord) -> None:
        d = record.to_dict()
        values = [d[f] if not isinstance(d[f], bool) else int(d[f]) for f in FIELDS]
        try:
            self._conn().execute(_INSERT, values)
        except sqlite3.IntegrityError:
            if not self._keyed:
                raise
            values[0] = f"{values[0]}~{os.urandom(4).hex()}"  # an earlier version's layout: ids are unique there
            self._conn().execute(_INSERT, values)

    def spend(self, identity: str, now: float) -> Spend:
        day0, _, month0, _ = period_starts(now)
        row = self._conn().execute(
            "SELECT COALESCE(SUM(CASE WHEN timestamp >= ? THEN cost_usd END), 0),"
            " COALESCE(SUM(CASE WHEN timestamp >= ? THEN input_tokens + output_tokens END), 0),"
            " COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens + output_tokens), 0)"
            " FROM llm_proxy_usage WHERE identity = ? AND timestamp >= ?",
            (day0, day0, identity, month0),
        ).fetchone()
        return Spend(daily_usd=row[0], daily_tokens=row[1], monthly_usd=row[2], monthly_tokens=row[3])

    def records(self, since: float) -> Iterator[dict[str, Any]]:
        cur = self._conn().execute(
            f"SELECT {', '.join(FIELDS)} FROM llm_proxy_usage WHERE timestamp >= ? ORDER BY timestamp", (since,)
        )
        for row in cur:
            rec = dict(zip(FIELDS, row))
            rec["estimated"] = bool(rec["estimated"])
            rec["cached"] = bool(rec["cached"])
            yield rec


class RedisStore(Store):
    """For fleets: per-identity and per-model daily counters, monthly per-identity counters for
    budgets, and an append-only stream of every record (``XADD``), all in one round trip.

    The stream is trimmed as it is written (``XADD ... MAXLEN ~ stream_maxlen``: Redis drops whole
    stream nodes, so it keeps somewhat more than that); ``None`` never trims it. Budgets read the
    counters, never the stream, so trimming it changes only what the CLI can list."""

    PREFIX = "llm_proxy"

    def __init__(self, url: str, stream_maxlen: int | None = None) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.stream = f"{self.PREFIX}:usage"
        self.stream_maxlen = stream_maxlen

    def _day(self, ts: float, kind: str, name: str) -> str:
        return f"{self.PREFIX}:day:{day_key(ts)}:{kind}:{name}"

    def _month(self, ts: float, name: str) -> str:
        return f"{self.PREFIX}:month:{month_key(ts)}:identity:{name}"

    def write(self, record: UsageRecord) -> None:
        ts = record.timestamp
        tokens = record.input_tokens + record.output_tokens
        cost = record.cost_usd or 0.0
        fields = {k: ("" if v is None else (int(v) if isinstance(v, bool) else v)) for k, v in record.to_dict().items()}
        pipe = self._redis.pipeline(transaction=True)
        for key, ttl in (
            (self._day(ts, "identity", record.identity), 40 * 86400),
            (self._day(ts, "model", record.model), 40 * 86400),
            (self._month(ts, record.identity), 400 * 86400),
        ):
            pipe.hincrby(key, "requests", 1)
            pipe.hincrby(key, "input_tokens", record.input_tokens)
            pipe.hincrby(key, "output_tokens", record.output_tokens)
            pipe.hincrby(key, "tokens", tokens)
            if cost:
                pipe.hincrbyfloat(key, "cost_usd", cost)
            pipe.expire(key, ttl)
        if self.stream_maxlen:
            pipe.xadd(self.stream, fields, maxlen=self.stream_maxlen, approximate=True)
        else:
            pipe.xadd(self.stream, fields)
        pipe.execute()

    def spend(self, identity: str, now: float) -> Spend:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._day(now, "identity", identity), "cost_usd", "tokens")
        pipe.hmget(self._month(now, identity), "cost_usd", "tokens")
        (d_cost, d_tok), (m_cost, m_tok) = pipe.execute()
        return Spend(
            daily_usd=float(d_cost or 0), daily_tokens=int(d_tok or 0),
            monthly_usd=float(m_cost or 0), monthly_tokens=int(m_tok or 0),
        )

    def records(self, since: float) -> Iterator[dict[str, Any]]:
        start = _stream_start(since)
        while True:
            batch = self._redis.xrange(self.stream, min=start, max="+", count=1000)
            if not batch:
                return
            for entry_id, fields in batch:
                yield _decode_stream_fields(fields)
            last = batch[-1][0].decode()
            ms, seq = last.split("-")
            start = f"{ms}-{int(seq) + 1}"

    def close(self) -> None:
        self._redis.close()


_MAX_STREAM_MS = 2**64 - 1


def _stream_start(since: float) -> str:
    """The first stream id at or after ``since``: a start before 1970 is ``0-0`` (a negative id
    is a Redis error), one past the largest id is the largest id."""
    ms = since * 1000
    if not ms > 0:  # also nan
        return "0-0"
    return f"{min(int(ms), _MAX_STREAM_MS) if math.isfinite(ms) else _MAX_STREAM_MS}-0"


_INT_FIELDS = {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "status", "retries"}
_FLOAT_FIELDS = {"timestamp", "cost_usd", "ttfb_ms", "duration_ms"}


def _decode_stream_fields(fields: dict[bytes, bytes]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in fields.items():
        key, val = k.decode(), v.decode()
        if val == "":
            rec[key] = None
        elif key in _INT_FIELDS:
            rec[key] = int(val)
        elif key in _FLOAT_FIELDS:
            rec[key] = float(val)
        elif key in ("estimated", "cached"):
            rec[key] = val in ("1", "True", "true")
        else:
            rec[key] = val
    return rec


def open_store(uri: str | None, instance_path: str, stream_maxlen: int | None = None) -> Store:
    """``None`` -> SQLite in the instance folder; ``sqlite:///path``; ``redis://...``; ``none``.
    ``stream_maxlen`` (``LLM_PROXY_USAGE_STREAM_MAXLEN``) bounds the Redis store's stream."""
    if uri in (None, ""):
        return SQLiteStore(os.path.join(instance_path, "llm_proxy_usage.sqlite3"))
    if uri == "none":
        return NullStore()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isabs(path):
            path = os.path.join(instance_path, path)
        return SQLiteStore(path)
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(uri, stream_maxlen=stream_maxlen)
    raise ValueError(f"unsupported usage store {uri!r}")


def summarize(records: Iterable[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Group records for the CLI: requests, tokens, cost (None when any cost is unknown)."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(str(r.get(by)), {by: str(r.get(by)), "requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "unpriced": 0, "estimated": 0, "errors": 0})
        g["requests"] += 1
        g["input_tokens"] += r.get("input_tokens") or 0
        g["output_tokens"] += r.get("output_tokens") or 0
        if r.get("cost_usd") is None:
            g["unpriced"] += 1
        else:
            g["cost_usd"] += r["cost_usd"]
        g["estimated"] += 1 if r.get("estimated") else 0
        g["errors"] += 1 if r.get("error_type") else 0
    rows = sorted(groups.values(), key=lambda g: (-g["cost_usd"], -g["requests"], g[by]))
    for g in rows:
        g["cost_usd"] = round(g["cost_usd"], 6)
    return rows


def now() -> float:
    return time.time()
