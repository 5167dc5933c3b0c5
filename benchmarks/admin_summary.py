"""How long the operator page's summary takes on a large SQLite ledger (and, with --redis, on Redis).

    python benchmarks/admin_summary.py [--records 1000000] [--days 30] [--redis] [--out benchmarks/RESULTS.md]

Builds a ledger of ``--records`` records spread over the last ``--days`` days (``--users`` 2,000, 6
models of 2 providers, ~3 % errors, ~2 % cancellations, ~10 % cached), then times:

* the first 30-day summary, which rolls the whole ledger up once (what an existing ledger costs
  the first time the page or ``flask llm-proxy report`` opens it);
* the 30-day, 7-day and 24-hour summaries afterwards (the median of 5 runs each): what an operator waits for;
* the 30-day summary after 10,000 more records (the roll-up of what arrived since the last look);
* with ``--redis``: the same records written through ``RedisStore.write`` (its aggregates kept as
  they are written) into a ``redis-server`` started for the run, and the summaries read back.

Prints a table; with ``--out`` also replaces the "Operator summary" section of that Markdown file.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from flask_llm_proxy.accounting.exchange import UsageRecord  # noqa: E402
from flask_llm_proxy.accounting.report import parse_range, summarize_range  # noqa: E402
from flask_llm_proxy.accounting.sqlite_store import SQLiteStore  # noqa: E402
from flask_llm_proxy.accounting.store import FIELDS  # noqa: E402

MODELS = (
    ("anthropic", "claude-sonnet-4-5", 3.0, 15.0),
    ("anthropic", "claude-haiku-4-5", 1.0, 5.0),
    ("anthropic", "claude-opus-4-1", 15.0, 75.0),
    ("openai", "gpt-4o", 2.5, 10.0),
    ("openai", "gpt-4o-mini", 0.15, 0.6),
    ("openai", "gpt-5", 1.25, 10.0),
)
ERRORS = ("upstream_error", "timeout", "rate_limited", "upstream_overloaded", "network_error")


def records(n: int, days: int, now: float, seed: int = 7, users: int = 2000) -> Iterator[dict[str, Any]]:
    rnd = random.Random(seed)
    span = days * 86400
    for i in range(n):
        provider, model, pin, pout = MODELS[rnd.randrange(len(MODELS))]
        inp, out = rnd.randint(20, 4000), rnd.randint(1, 1200)
        roll = rnd.random()
        error = ERRORS[rnd.randrange(len(ERRORS))] if roll < 0.03 else ("client_closed" if roll < 0.05 else None)
        yield {
            # appended in time order, as a ledger is (a record is dated when its request began)
            "request_id": f"bench-{i}",
            "timestamp": now - span + (i + rnd.random()) * span / n,
            "identity": f"user-{rnd.randrange(users)}",
            "provider": provider,
            "model": model,
            "endpoint": "chat",
            "input_tokens": inp,
            "output_tokens": out,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "estimated": int(error == "client_closed"),
            "cost_usd": round((inp * pin + out * pout) / 1e6, 6),
            "status": 200 if error in (None, "client_closed") else 502,
            "error_type": error,
            "ttfb_ms": round(rnd.lognormvariate(6.2, 0.5), 1) if error is None else None,
            "duration_ms": 1000.0,
            "retries": 0,
            "finish_reason": "stop" if error is None else None,
            "cached": int(rnd.random() < 0.1),
        }


def fill_sqlite(store: SQLiteStore, rows: Iterator[dict[str, Any]]) -> None:
    conn = store._conn()
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO llm_proxy_usage ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})", ([r[f] for f in FIELDS] for r in rows)
    )
    conn.execute("COMMIT")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1000, result


def wall_and_cpu(fn: Callable[[], Any], runs: int = 1) -> str:
    """Median wall time and this process's CPU time (SQLite's work included; a loaded machine
    stretches the first, hardly the second)."""
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return f"{statistics.median(walls):,.0f} ms (CPU {statistics.median(cpus):,.0f} ms)"


def bench_store(name: str, store: Any, now: float, add: Callable[[int], None]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    summary = lambda r: summarize_range(store, parse_range(r, now=now), now=now)  # noqa: E731
    got: list[dict[str, Any]] = []
    first = wall_and_cpu(lambda: got.append(summary("30d")))
    rows.append((name, "30-day summary, first (rolls the ledger up once)" if name == "sqlite" else "30-day summary, first", first))
    for r in ("30d", "7d", "24h"):
        rows.append((name, f"{r} summary (median of 5)", wall_and_cpu(lambda r=r: summary(r), runs=5)))
    add(10_000)
    rows.append((name, "30-day summary after 10,000 new records", wall_and_cpu(lambda: got.append(summary("30d")))))
    rows.append((name, "records in the 30-day summary", f"{got[0]['requests']:,} (then {got[-1]['requests']:,})"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--users", type=int, default=2000, help="distinct identities in the ledger")
    p.add_argument("--redis", action="store_true", help="also write records through a RedisStore and time it")
    p.add_argument("--redis-records", type=int, default=200_000, help="records written to Redis, one by one (default 200,000)")
    p.add_argument("--out", default=None, help="a Markdown file whose 'Operator summary' section is replaced")
    args = p.parse_args(argv)
    now = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="admin-bench-"))
    table: list[tuple[str, str, str]] = []

    store = SQLiteStore(str(tmp / "ledger.sqlite3"))
    ms, _ = timed(lambda: fill_sqlite(store, records(args.records, args.days, now, users=args.users)))
    size = os.path.getsize(tmp / "ledger.sqlite3") / 2**20
    table.append(
        ("sqlite", f"ledger built ({args.records:,} records over {args.days} days, bulk insert)", f"{ms / 1000:,.1f} s, {size:,.0f} MiB")
    )
    extra = iter(records(10_000, 1, now, seed=8, users=args.users))
    table += bench_store("sqlite", store, now, lambda n: fill_sqlite(store, (next(extra) for _ in range(n))))

    if args.redis:
        from conftest import free_port
        from redis_process import RedisProcess

        from flask_llm_proxy.accounting.redis_store import RedisStore

        server = RedisProcess(free_port())
        try:
            rstore = RedisStore(server.url, stream_maxlen=100_000)
            fields = [f.name for f in UsageRecord.__dataclass_fields__.values()]

            def write(rows: Iterator[dict[str, Any]]) -> None:
                for r in rows:
                    rstore.write(UsageRecord(**{k: (bool(v) if k in ("estimated", "cached") else v) for k, v in r.items() if k in fields}))

            n = args.redis_records
            ms, _ = timed(lambda: write(records(n, args.days, now, users=args.users)))
            table.append(
                (
                    "redis",
                    f"{n:,} records over {args.days} days written one by one (RedisStore.write, stream kept to 100,000)",
                    f"{ms / 1000:,.1f} s ({ms * 1000 / n:,.0f} us per record, with the record's own counters)",
                )
            )
            extra_r = iter(records(10_000, 1, now, seed=8, users=args.users))
            table += bench_store("redis", rstore, now, lambda n: write(next(extra_r) for _ in range(n)))
        finally:
            server.stop()

    width = max(len(t[1]) for t in table)
    lines = [f"| store | {'what'.ljust(width)} | time |", f"| --- | {'-' * width} | --- |"]
    lines += [f"| {s} | {w.ljust(width)} | {v} |" for s, w, v in table]
    print("\n".join(lines))
    if args.out:
        write_section(Path(args.out), lines, "python benchmarks/admin_summary.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


def write_section(path: Path, lines: list[str], command: str) -> None:
    """Replace (or add) this benchmark's section of RESULTS.md; benchmarks/run.py keeps it when it rewrites the file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sections import write_section as write

    sqlite = f"- SQLite {__import__('sqlite3').sqlite_version}"
    write(path, "admin-summary", "Operator summary (benchmarks/admin_summary.py)", command, [sqlite, "", *lines])


if __name__ == "__main__":
    raise SystemExit(main())
