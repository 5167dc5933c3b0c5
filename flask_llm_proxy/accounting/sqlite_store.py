"""The SQLite usage store: one file per host, shared by its gunicorn workers (WAL mode)."""
from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Iterator

from . import sqlite_rollup
from .cells import Cells
from .exchange import UsageRecord
from .store import FIELDS, Spend, Store, period_starts

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
    ttfb_ms REAL, duration_ms REAL, retries INTEGER NOT NULL, finish_reason TEXT, cached INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    saved_input_tokens INTEGER NOT NULL DEFAULT 0, saved_output_tokens INTEGER NOT NULL DEFAULT 0,
    saved_cost_usd REAL, queue_ms REAL
)"""
#: columns added after the first release, with their definitions: a ledger made earlier gains them
#: at start (ALTER TABLE ... ADD COLUMN with a default is instant in SQLite, whatever the size)
_ADDED_COLUMNS = (
    ("reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("saved_input_tokens", "INTEGER NOT NULL DEFAULT 0"), ("saved_output_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("saved_cost_usd", "REAL"), ("queue_ms", "REAL"),
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_identity_ts ON llm_proxy_usage (identity, timestamp)",
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_ts ON llm_proxy_usage (timestamp)",
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_request_id ON llm_proxy_usage (request_id)",
)


_INSERT = f"INSERT INTO llm_proxy_usage ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"


def _add_columns(conn: sqlite3.Connection, present: set[str]) -> None:
    for name, definition in _ADDED_COLUMNS:
        if name in present:
            continue
        try:
            conn.execute(f"ALTER TABLE llm_proxy_usage ADD COLUMN {name} {definition}")
        except sqlite3.OperationalError as exc:  # another worker starting at the same time added it
            if "duplicate column" not in str(exc):
                raise


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
            columns = list(conn.execute("PRAGMA table_info(llm_proxy_usage)"))
            self._keyed = any(col[1] == "request_id" and col[5] for col in columns)
            _add_columns(conn, {col[1] for col in columns})
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

    def aggregates(self, grain: str, first: int, last: int, top: int = 10) -> Cells:
        """The operator page's figures from the rollup (:mod:`.sqlite_rollup`), brought up to date first."""
        conn = self._conn()
        sqlite_rollup.catch_up(conn)
        return sqlite_rollup.read_cells(conn, grain, first, last, top)
