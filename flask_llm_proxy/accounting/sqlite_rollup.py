"""The SQLite ledger rolled up for the operator page: per hour and per day, what :mod:`.cells` holds.

Reading a month of a busy ledger row by row is seconds of work; reading its rollup is
milliseconds. The rollup is brought up to date when it is read, not when a record is written:
the rows with a ``rowid`` above the last one rolled up (``llm_proxy_roll_mark``) are added, in
chunks of :data:`CHUNK` rows, each in its own ``BEGIN IMMEDIATE`` transaction, so

* the write path of the ledger is unchanged and a ledger from an earlier version is rolled up the
  first time it is summarized;
* a record that arrives late (a long stream is written when it ends, dated when it began) is
  still counted: rows are taken by ``rowid``, never by time;
* two processes summarizing at once never count a row twice (the mark is read and moved inside
  the same write transaction), and a worker writing a record waits for one chunk at most.

Rows are assumed to be appended, never changed in place or deleted and reused.
"""

from __future__ import annotations

import sqlite3

from .cells import CANCELLED, MODEL_METRICS, USER_METRICS, WORKER_LOST, Cells, UserFigures, ms_bin_sql

#: rows rolled up per write transaction: a writer waits for one chunk at most
CHUNK = 20_000

_TABLES = (
    "CREATE TABLE IF NOT EXISTS llm_proxy_roll_mark (id INTEGER PRIMARY KEY CHECK (id = 1), last_rowid INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS llm_proxy_roll_model (grain TEXT NOT NULL, bucket INTEGER NOT NULL, provider TEXT NOT NULL,"
    " model TEXT NOT NULL, " + ", ".join(f"{m} INTEGER NOT NULL" for m in MODEL_METRICS) + ","
    " PRIMARY KEY (grain, bucket, provider, model)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS llm_proxy_roll_error (grain TEXT NOT NULL, bucket INTEGER NOT NULL, error_type TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (grain, bucket, error_type)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS llm_proxy_roll_user (grain TEXT NOT NULL, bucket INTEGER NOT NULL, identity TEXT NOT NULL, "
    + ", ".join(f"{m} INTEGER NOT NULL" for m in USER_METRICS)
    + ", PRIMARY KEY (grain, bucket, identity)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS llm_proxy_roll_ttfb (grain TEXT NOT NULL, bucket INTEGER NOT NULL, provider TEXT NOT NULL,"
    " ms INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (grain, bucket, provider, ms)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS llm_proxy_roll_queue (grain TEXT NOT NULL, bucket INTEGER NOT NULL, ms INTEGER NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (grain, bucket, ms)) WITHOUT ROWID",
)

_SIZES = (("hour", 3600), ("day", 86400))
_RANGE = "FROM llm_proxy_usage WHERE rowid > :lo AND rowid <= :hi"
_BUCKET = "CAST(timestamp / :size AS INTEGER)"


def _upsert(table: str, keys: tuple[str, ...], values: tuple[str, ...], select: str) -> str:
    cols = ", ".join(("grain", "bucket") + keys + values)
    conflict = ", ".join(("grain", "bucket") + keys)
    update = ", ".join(f"{v} = {v} + excluded.{v}" for v in values)
    return f"INSERT INTO {table} ({cols}) {select} ON CONFLICT ({conflict}) DO UPDATE SET {update}"


_MODEL_SQL = _upsert(
    "llm_proxy_roll_model",
    ("provider", "model"),
    MODEL_METRICS,
    f"SELECT :grain, {_BUCKET}, provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
    " SUM(CASE WHEN cost_usd IS NULL THEN 0 ELSE CAST(ROUND(cost_usd * 1000000) AS INTEGER) END), SUM(cost_usd IS NULL),"
    f" SUM(error_type IS NOT NULL AND error_type <> '{CANCELLED}'), SUM(error_type IS '{CANCELLED}'), SUM(cached <> 0),"
    f" SUM(error_type IS '{WORKER_LOST}'), SUM(estimated <> 0) {_RANGE} GROUP BY 2, 3, 4",
)
_ERROR_SQL = _upsert(
    "llm_proxy_roll_error",
    ("error_type",),
    ("n",),
    f"SELECT :grain, {_BUCKET}, error_type, COUNT(*) {_RANGE} AND error_type IS NOT NULL GROUP BY 2, 3",
)
_USER_SQL = _upsert(
    "llm_proxy_roll_user",
    ("identity",),
    USER_METRICS,
    f"SELECT :grain, {_BUCKET}, identity, COUNT(*), SUM(input_tokens + output_tokens),"
    f" SUM(CASE WHEN cost_usd IS NULL THEN 0 ELSE CAST(ROUND(cost_usd * 1000000) AS INTEGER) END) {_RANGE} GROUP BY 2, 3",
)
_TTFB_SQL = _upsert(
    "llm_proxy_roll_ttfb",
    ("provider", "ms"),
    ("n",),
    f"SELECT :grain, {_BUCKET}, provider, {ms_bin_sql('ttfb_ms')}, COUNT(*) {_RANGE} AND ttfb_ms IS NOT NULL GROUP BY 2, 3, 4",
)
# queue_ms arrives with the request queue; a ledger without the column has no queue waits
_QUEUE_SQL = _upsert(
    "llm_proxy_roll_queue",
    ("ms",),
    ("n",),
    f"SELECT :grain, {_BUCKET}, {ms_bin_sql('queue_ms')}, COUNT(*) {_RANGE} AND queue_ms IS NOT NULL GROUP BY 2, 3",
)


def ensure_tables(conn: sqlite3.Connection) -> None:
    for sql in _TABLES:
        conn.execute(sql)


def catch_up(conn: sqlite3.Connection, chunk: int = CHUNK) -> int:
    """Roll up every row written since the last call (by anyone); returns how many rows it added."""
    ensure_tables(conn)
    has_queue = any(col[1] == "queue_ms" for col in conn.execute("PRAGMA table_info(llm_proxy_usage)"))
    statements = (_MODEL_SQL, _ERROR_SQL, _USER_SQL, _TTFB_SQL) + ((_QUEUE_SQL,) if has_queue else ())
    added = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT last_rowid FROM llm_proxy_roll_mark WHERE id = 1").fetchone()
            lo = row[0] if row else 0
            top = conn.execute("SELECT MAX(rowid) FROM llm_proxy_usage").fetchone()[0] or 0
            if top <= lo:
                conn.execute("COMMIT")
                return added
            hi = min(top, lo + chunk)
            for grain, size in _SIZES:
                params = {"grain": grain, "size": size, "lo": lo, "hi": hi}
                for sql in statements:
                    conn.execute(sql, params)
            added += conn.execute("SELECT COUNT(*) FROM llm_proxy_usage WHERE rowid > ? AND rowid <= ?", (lo, hi)).fetchone()[0]
            conn.execute(
                "INSERT INTO llm_proxy_roll_mark (id, last_rowid) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET last_rowid = excluded.last_rowid",
                (hi,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def read_cells(conn: sqlite3.Connection, grain: str, first: int, last: int, top: int = 10) -> Cells:
    """The rolled-up cells of buckets ``first..last``, read in one transaction (one snapshot). Users
    are counted and ranked in SQL: a month of a busy ledger is tens of thousands of user-days."""
    cells = Cells(grain)
    where = "WHERE grain = ? AND bucket BETWEEN ? AND ?"
    args = (grain, first, last)
    conn.execute("BEGIN")
    try:
        for b, provider, model, *values in conn.execute(
            f"SELECT bucket, provider, model, {', '.join(MODEL_METRICS)} FROM llm_proxy_roll_model {where}", args
        ):
            cells.models[(b, provider, model)] = dict(zip(MODEL_METRICS, values, strict=False))
        for b, error_type, n in conn.execute(f"SELECT bucket, error_type, n FROM llm_proxy_roll_error {where}", args):
            cells.errors[(b, error_type)] = n
        users = f"FROM llm_proxy_roll_user {where}"
        days = "bucket / 24" if grain == "hour" else "bucket"
        cells.user_figures = UserFigures(
            active=dict(conn.execute(f"SELECT bucket, COUNT(*) {users} GROUP BY bucket", args).fetchall()),
            active_days=dict(conn.execute(f"SELECT {days}, COUNT(DISTINCT identity) {users} GROUP BY 1", args).fetchall()),
            active_total=conn.execute(f"SELECT COUNT(DISTINCT identity) {users}", args).fetchone()[0],
            ranked=[
                (identity, dict(zip(USER_METRICS, values, strict=False)))
                for identity, *values in conn.execute(
                    f"SELECT identity, {', '.join(f'SUM({m})' for m in USER_METRICS)} {users} GROUP BY identity"
                    " ORDER BY SUM(cost_micro) DESC, SUM(requests) DESC, identity LIMIT ?",
                    (*args, top),
                )
            ],
        )
        for b, provider, ms, n in conn.execute(f"SELECT bucket, provider, ms, n FROM llm_proxy_roll_ttfb {where}", args):
            cells.ttfb.setdefault((b, provider), {})[ms] = n
        for b, ms, n in conn.execute(f"SELECT bucket, ms, n FROM llm_proxy_roll_queue {where}", args):
            cells.queue.setdefault(b, {})[ms] = n
    finally:
        conn.execute("COMMIT")
    return cells
