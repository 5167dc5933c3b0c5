"""The SQLite usage store: one file per host, shared by its gunicorn workers (WAL mode)."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._compat import gevent_active, run_later
from . import sqlite_rollup
from .cells import Cells
from .exchange import UsageRecord
from .inflight import COLUMNS, InflightEntry, lost_record, pid_alive
from .store import FIELDS, Spend, Store, period_starts

log = logging.getLogger("flask_llm_proxy")

CHECKPOINT_EVERY = 500  # rows written without the thread pool between two WAL checkpoints
SETUP_ATTEMPTS = 40  # about 8 s of waiting in all, far more than any setup race needs

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
    saved_cost_usd REAL, queue_ms REAL, deployment TEXT, fallback_from TEXT
)"""
#: columns added after the first release, with their definitions: a ledger made earlier gains them
#: at start (ALTER TABLE ... ADD COLUMN with a default is instant in SQLite, whatever the size)
_ADDED_COLUMNS = (
    ("reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("saved_input_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("saved_output_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("saved_cost_usd", "REAL"),
    ("queue_ms", "REAL"),
    ("deployment", "TEXT"),
    ("fallback_from", "TEXT"),
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_identity_ts ON llm_proxy_usage (identity, timestamp)",
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_ts ON llm_proxy_usage (timestamp)",
    "CREATE INDEX IF NOT EXISTS llm_proxy_usage_request_id ON llm_proxy_usage (request_id)",
)


# The in-flight records (write-ahead), and the worker_lost records closed but not yet announced
# (usage_recorded, metrics, quota): a separate table each, so llm_proxy_usage keeps exactly one
# row per request and readers of it need not know about either.
_WRITE_AHEAD_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS llm_proxy_inflight (
    wal_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, identity TEXT NOT NULL, provider TEXT NOT NULL,
    model TEXT NOT NULL, endpoint TEXT, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    price_in REAL, price_out REAL, host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
    updated REAL NOT NULL, deployment TEXT, fallback_from TEXT
) WITHOUT ROWID""",  # one b-tree, no index besides: a request writes and deletes one row (the sweeps scan it, it is small)
    "CREATE TABLE IF NOT EXISTS llm_proxy_lost (usage_id INTEGER PRIMARY KEY)",
)
_INSERT_INFLIGHT = f"INSERT OR REPLACE INTO llm_proxy_inflight ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

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
    write_ahead = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._pid = os.getpid()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._keyed = False
        self._nowait_writes = 0
        self._setup()

    def _setup(self) -> None:
        """Make the file ready, safely when every worker of every process opens a new file at once.

        Switching to WAL takes the file's exclusive lock and SQLite answers "database is locked"
        at once, without waiting for the busy timeout, when another connection holds a lock it
        needs (a common case while several processes set up a fresh file). So: the busy timeout
        before anything else, the mode switch only when the file is not in WAL yet, the schema in
        one write transaction (``IF NOT EXISTS``, columns added only when missing), and the
        whole of it retried with a growing, jittered delay, a bounded number of times.
        """
        delay = 0.005
        for attempt in range(SETUP_ATTEMPTS):
            try:
                conn = self._connect()
                try:
                    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                        conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        self._schema(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                finally:
                    conn.close()
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or attempt == SETUP_ATTEMPTS - 1:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.25)

    def _schema(self, conn: sqlite3.Connection) -> None:
        conn.execute(_TABLE)
        columns = {col[1]: col for col in conn.execute("PRAGMA table_info(llm_proxy_usage)")}
        # A ledger made by an earlier version has the request id as its key. It is not moved
        # (on a large file that would hold every worker's start past gunicorn's timeout): a
        # repeated id is written with a suffix instead (see write).
        self._keyed = bool(columns["request_id"][5])
        _add_columns(conn, set(columns))  # a ledger from an earlier version: the newer columns
        for index in _INDEXES[:2] if self._keyed else _INDEXES:
            conn.execute(index)
        for statement in _WRITE_AHEAD_SCHEMA:
            conn.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")  # first: every statement after it may meet a lock
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL mode is the file's, set once by _setup
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def write(self, record: UsageRecord) -> None:
        self._insert(self._conn(), record)

    def _insert(self, conn: sqlite3.Connection, record: UsageRecord) -> int:
        d = record.to_dict()
        values = [d[f] if not isinstance(d[f], bool) else int(d[f]) for f in FIELDS]
        try:
            return conn.execute(_INSERT, values).lastrowid or 0
        except sqlite3.IntegrityError:
            if not self._keyed:
                raise
            values[0] = f"{values[0]}~{os.urandom(4).hex()}"  # an earlier version's layout: ids are unique there
            return conn.execute(_INSERT, values).lastrowid or 0

    # --- write-ahead (see Store) ---------------------------------------------------------------

    def begin(self, entry: InflightEntry) -> None:
        self._conn().execute(_INSERT_INFLIGHT, _row(entry))

    def try_begin(self, entry: InflightEntry) -> bool:
        return self._nowait(lambda conn: conn.execute(_INSERT_INFLIGHT, _row(entry)) and True) is not None

    def try_finish(self, record: UsageRecord, wal_id: str | None) -> bool | None:
        return self._nowait(lambda conn: self._finish_on(conn, record, wal_id))

    def _nowait(self, write: Callable[[sqlite3.Connection], Any], rows: Callable[[Any], int] | None = None) -> Any:
        """``write(conn)`` now, on the calling greenlet, when it needs no wait; None when it would.
        ``rows(result)``: how many rows it wrote (default one), for the checkpoints.

        A thread pool round trip costs more CPU than the insert itself, so a write goes there only
        when it has to wait. Here it runs on a connection that never waits for a lock
        (``busy_timeout = 0``: another writer means "locked" at once, nothing done, and the caller
        goes to the thread pool) and never checkpoints (``wal_autocheckpoint = 0``: a checkpoint
        copies pages and syncs the disk; the thread pool does it, every ``CHECKPOINT_EVERY`` rows
        so written). In WAL mode with ``synchronous=NORMAL`` a commit does not wait for the disk.
        """
        # Under gevent one connection for the process: every greenlet runs on the hub's thread and
        # none yields inside a SQLite call (gevent's threading.local would be one per greenlet, a
        # connection per request). Elsewhere one per thread.
        holder: Any = self if gevent_active() else self._local
        conn = getattr(holder, "_nowait_conn", None)
        if conn is None or getattr(holder, "_nowait_pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            holder._nowait_conn = conn
            holder._nowait_pid = os.getpid()
        try:
            done = write(conn)
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return None
            raise
        before = self._nowait_writes
        self._nowait_writes += rows(done) if rows is not None else 1
        if self._nowait_writes // CHECKPOINT_EVERY != before // CHECKPOINT_EVERY:
            run_later(self._checkpoint)
        return done

    def _checkpoint(self) -> None:
        try:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one tries again
            log.warning("usage store: WAL checkpoint failed (%s)", exc)

    def progress(self, host: str, pid: int, entries: list[InflightEntry], now: float) -> None:
        self._progress_on(self._conn(), host, pid, entries, now)

    def try_progress(self, host: str, pid: int, entries: list[InflightEntry], now: float) -> bool:
        # every row of the worker is rewritten (its lease): the WAL grows with them, not per call
        return self._nowait(lambda conn: self._progress_on(conn, host, pid, entries, now), rows=int) is not None

    @staticmethod
    def _progress_on(conn: sqlite3.Connection, host: str, pid: int, entries: list[InflightEntry], now: float) -> int:
        """The update in one transaction; how many rows it wrote."""
        rows = [(e.input_tokens, e.output_tokens, e.provider, e.model, e.deployment, e.fallback_from, e.wal_id) for e in entries]
        with _transaction(conn):  # the rows are built first: the write lock is held for the writes only
            changed = conn.executemany(
                "UPDATE llm_proxy_inflight SET input_tokens = ?, output_tokens = ?, provider = ?, model = ?,"
                " deployment = ?, fallback_from = ? WHERE wal_id = ?",
                rows,
            ).rowcount
            renewed = conn.execute("UPDATE llm_proxy_inflight SET updated = ? WHERE host = ? AND pid = ?", (now, host, pid)).rowcount
        return max(0, changed) + max(0, renewed)

    def finish(self, record: UsageRecord, wal_id: str | None) -> bool:
        return self._finish_on(self._conn(), record, wal_id)

    def _finish_on(self, conn: sqlite3.Connection, record: UsageRecord, wal_id: str | None) -> bool:
        if wal_id is None:
            self._insert(conn, record)
            return True
        with _transaction(conn):
            if conn.execute("DELETE FROM llm_proxy_inflight WHERE wal_id = ?", (wal_id,)).rowcount == 0:
                return False  # closed as worker_lost by a sweep: that record stands
            self._insert(conn, record)
        return True

    def close_dead(self, host: str, lease: float, now: float) -> int:
        me = (host, os.getpid())
        workers = self._conn().execute("SELECT host, pid, MAX(updated) FROM llm_proxy_inflight GROUP BY host, pid").fetchall()
        closed = 0
        for h, pid, updated in workers:
            if (h, pid) == me:
                continue
            if h == host and not pid_alive(pid):
                closed += self.close_worker(h, pid)
            elif updated < now - lease:
                closed += self._close(h, pid, stale_before=now - lease)
        return closed

    def close_worker(self, host: str, pid: int) -> int:
        return self._close(host, pid)

    def _close(self, host: str, pid: int, stale_before: float | None = None) -> int:
        with _transaction(self._conn()) as conn:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM llm_proxy_inflight WHERE host = ? AND pid = ?", (host, pid)).fetchall()
            entries = [InflightEntry(*row) for row in rows]
            if stale_before is not None and any(e.updated >= stale_before for e in entries):
                return 0  # the worker renewed its lease after all
            for e in entries:
                conn.execute("DELETE FROM llm_proxy_inflight WHERE wal_id = ?", (e.wal_id,))
                rowid = self._insert(conn, lost_record(e))
                conn.execute("INSERT INTO llm_proxy_lost (usage_id) VALUES (?)", (rowid,))
        return len(entries)

    def take_lost(self, limit: int = 100) -> list[UsageRecord]:
        conn = self._conn()
        if conn.execute("SELECT 1 FROM llm_proxy_lost LIMIT 1").fetchone() is None:
            return []  # the usual case: no write transaction
        with _transaction(conn):
            rows = conn.execute(
                f"SELECT l.usage_id, {', '.join('u.' + f for f in FIELDS)} FROM llm_proxy_lost l"
                " JOIN llm_proxy_usage u ON u.rowid = l.usage_id ORDER BY l.usage_id LIMIT ?",
                (limit,),
            ).fetchall()
            conn.executemany("DELETE FROM llm_proxy_lost WHERE usage_id = ?", [(row[0],) for row in rows])
        return [UsageRecord(**_decoded(dict(zip(FIELDS, row[1:], strict=True)))) for row in rows]

    def spend(self, identity: str, now: float) -> Spend:
        day0, _, month0, _ = period_starts(now)
        row = (
            self._conn()
            .execute(
                "SELECT COALESCE(SUM(CASE WHEN timestamp >= ? THEN cost_usd END), 0),"
                " COALESCE(SUM(CASE WHEN timestamp >= ? THEN input_tokens + output_tokens END), 0),"
                " COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens + output_tokens), 0)"
                " FROM llm_proxy_usage WHERE identity = ? AND timestamp >= ?",
                (day0, day0, identity, month0),
            )
            .fetchone()
        )
        return Spend(daily_usd=row[0], daily_tokens=row[1], monthly_usd=row[2], monthly_tokens=row[3])

    def records(self, since: float) -> Iterator[dict[str, Any]]:
        cur = self._conn().execute(f"SELECT {', '.join(FIELDS)} FROM llm_proxy_usage WHERE timestamp >= ? ORDER BY timestamp", (since,))
        for row in cur:
            yield _decoded(dict(zip(FIELDS, row, strict=False)))

    def aggregates(self, grain: str, first: int, last: int, top: int = 10) -> Cells:
        """The operator page's figures from the rollup (:mod:`.sqlite_rollup`), brought up to date first."""
        conn = self._conn()
        sqlite_rollup.catch_up(conn)
        return sqlite_rollup.read_cells(conn, grain, first, last, top)


def _decoded(rec: dict[str, Any]) -> dict[str, Any]:
    rec["estimated"] = bool(rec["estimated"])
    rec["cached"] = bool(rec["cached"])
    return rec


def _row(e: InflightEntry) -> tuple[Any, ...]:
    return tuple(getattr(e, c) for c in COLUMNS)


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock at once (a deferred one that reads first could
    fail at its first write when another process wrote in between)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
