"""Where usage records go: the interface every store answers, and the choice of store.

Both stores answer the questions the proxy asks: "what did this identity spend in the current day
and month" (budgets, before the upstream call) and "list the records since T" (the CLI). SQLite
(:mod:`.sqlite_store`) is for one host, Redis (:mod:`.redis_store`) for a fleet; :mod:`.ledger`
opens the one a URI names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from .cells import GRAINS, Cells, cells_from_records
from .exchange import UsageRecord
from .inflight import InflightEntry

log = logging.getLogger("flask_llm_proxy")

FIELDS = (
    "request_id",
    "timestamp",
    "identity",
    "provider",
    "model",
    "endpoint",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "estimated",
    "cost_usd",
    "status",
    "error_type",
    "ttfb_ms",
    "duration_ms",
    "retries",
    "finish_reason",
    "cached",
    "reasoning_tokens",
    "saved_input_tokens",
    "saved_output_tokens",
    "saved_cost_usd",
    "queue_ms",
    "deployment",
    "fallback_from",
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
    """Interface of a usage store.

    The write-ahead part (``begin`` .. ``take_lost``, see :mod:`.inflight`) keeps one in-flight
    record per open request, so that a request whose worker dies still leaves its record. A store
    without it (``write_ahead = False``) writes only the final records.
    """

    blocking = False
    write_ahead = False

    def write(self, record: UsageRecord) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def begin(self, entry: InflightEntry) -> None:
        """Store the in-flight record of a request about to call the upstream."""

    def try_begin(self, entry: InflightEntry) -> bool:
        """:meth:`begin` if it can be done at once without waiting (a blocking store, on the
        caller's thread); False: not done, call :meth:`begin` where waiting is allowed."""
        return False

    def try_finish(self, record: UsageRecord, wal_id: str | None) -> bool | None:
        """:meth:`finish` if it can be done at once without waiting; None: not done."""
        return None

    def progress(self, host: str, pid: int, entries: list[InflightEntry], now: float) -> None:
        """Bring ``entries`` (changed since the last call) up to date, and renew the lease of the
        worker ``host``/``pid`` on all its in-flight records."""

    def try_progress(self, host: str, pid: int, entries: list[InflightEntry], now: float) -> bool:
        """:meth:`progress` if it can be done at once without waiting; False: not done."""
        return False

    def finish(self, record: UsageRecord, wal_id: str | None) -> bool:
        """Replace the in-flight record ``wal_id`` by the final ``record`` atomically; ``False``
        (nothing written) when a sweep closed it already. ``wal_id`` None: just write."""
        self.write(record)
        return True

    def close_dead(self, host: str, lease: float, now: float) -> int:
        """Close the in-flight records of dead workers as ``worker_lost``: workers of ``host`` whose
        process is gone, and any worker whose lease (last update) is older than ``lease`` seconds.
        Returns how many were closed; they wait in the store for :meth:`take_lost`."""
        return 0

    def close_worker(self, host: str, pid: int) -> int:
        """Close the in-flight records of one worker known to be dead (gunicorn's ``child_exit``)."""
        return 0

    def take_lost(self, limit: int = 100) -> list[UsageRecord]:
        """Claim up to ``limit`` closed ``worker_lost`` records not yet announced (the signal,
        metrics, quota): each is handed out once, to one caller."""
        return []

    def spend(self, identity: str, now: float) -> Spend:  # pragma: no cover
        raise NotImplementedError

    def records(self, since: float) -> Iterator[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def aggregates(self, grain: str, first: int, last: int, top: int = 10) -> Cells:
        """The operator page's aggregates of buckets ``first..last`` (:mod:`.cells`), with at least
        the ``top`` costliest users. This default reads the records; the SQLite and Redis stores
        answer from rollups instead."""
        return cells_from_records(self.records(first * GRAINS[grain]), grain, first, last)

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


def summarize(records: Iterable[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Group records for the CLI: requests, tokens, cost (None when any cost is unknown)."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(
            str(r.get(by)),
            {
                by: str(r.get(by)),
                "requests": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": 0.0,
                "unpriced": 0,
                "estimated": 0,
                "errors": 0,
            },
        )
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
