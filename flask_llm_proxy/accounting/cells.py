"""The aggregates the operator page is computed from, in one shape for every store.

A store answers "what happened in these hours (or days)" with :class:`Cells`: counters per
(bucket, provider, model), per (bucket, error type), per (bucket, identity), and histograms of the
time to first token per (bucket, provider) and of queue waits per bucket. SQLite rolls its rows up
into these cells (:mod:`.sqlite_rollup`), Redis keeps them as counters written with each record
(:mod:`.redis_rollup`), and any other store gets them from its records (:func:`cells_from_records`).

Every figure is an integer so both stores agree to the last digit: costs are counted in
micro-dollars (a record's cost is already rounded to the micro-dollar) and times are binned by
:func:`ms_bin` (whole milliseconds below 128 ms, within about 1 % above), which is what the
percentiles are taken over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

HOUR = 3600
DAY = 86400
GRAINS = {"hour": HOUR, "day": DAY}

#: counters kept per (bucket, provider, model)
MODEL_METRICS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_micro",
    "unpriced",
    "errors",
    "cancelled",
    "cached",
    "worker_lost",
    "estimated",
)
#: counters kept per (bucket, identity)
USER_METRICS = ("requests", "tokens", "cost_micro")

#: the error type of a request whose client left before its end: a cancellation, not an error
CANCELLED = "client_closed"
#: the error type issue-19-style write-ahead accounting gives a request whose worker died
WORKER_LOST = "worker_lost"


def bucket_of(ts: float, grain: str) -> int:
    """Hours or days since the epoch (UTC); ``int(ts / size)`` as SQLite's ``CAST(ts / size AS INTEGER)``."""
    return int(ts / GRAINS[grain])


def micro(cost: float | None) -> int:
    return 0 if cost is None else round(cost * 1_000_000)


#: significant bits a time keeps: whole milliseconds below 128 ms, within about 1 % above
BITS = 7
_MAX_SHIFT = 40


def ms_bin(ms: float) -> int:
    """A time in ms, rounded to a whole ms, then to its :data:`BITS` leading bits (64 bins per
    doubling: a day of first-token times is a few hundred bins, not one per millisecond)."""
    v = int(ms + 0.5) if ms > 0 else 0
    shift = max(0, v.bit_length() - BITS)
    if not shift:
        return v
    return ((v + (1 << (shift - 1))) >> shift) << shift


def ms_bin_sql(col: str) -> str:
    """:func:`ms_bin` as an SQLite expression (integers and shifts only, so both agree exactly)."""
    v = f"(CASE WHEN {col} > 0 THEN CAST({col} + 0.5 AS INTEGER) ELSE 0 END)"
    cases = " ".join(f"WHEN {v} < {1 << (BITS + s)} THEN (({v} + {1 << (s - 1)}) >> {s}) << {s}" for s in range(1, _MAX_SHIFT))
    return f"(CASE WHEN {v} < {1 << BITS} THEN {v} {cases} ELSE {v} END)"


def record_counts(rec: Mapping[str, Any]) -> dict[str, int]:
    """What one record adds to its (bucket, provider, model) counters. Fields a record does not
    carry yet (``queue_ms``, say) count as zero."""
    error = rec.get("error_type")
    cost = rec.get("cost_usd")
    return {
        "requests": 1,
        "input_tokens": int(rec.get("input_tokens") or 0),
        "output_tokens": int(rec.get("output_tokens") or 0),
        "cost_micro": micro(cost),
        "unpriced": 1 if cost is None else 0,
        "errors": 1 if error and error != CANCELLED else 0,
        "cancelled": 1 if error == CANCELLED else 0,
        "cached": 1 if rec.get("cached") else 0,
        "worker_lost": 1 if error == WORKER_LOST else 0,
        "estimated": 1 if rec.get("estimated") else 0,
    }


Histogram = dict  # {ms bin: count}

_RANK = ("cost_micro", "requests")


@dataclass
class UserFigures:
    """Who was active and who cost most over the buckets of a summary: a store that can count
    them itself (SQLite, in SQL) gives these instead of a row per user and bucket."""

    active: dict[int, int]  #: distinct identities per bucket
    active_days: dict[int, int]  #: per UTC day (an hourly range's days)
    active_total: int  #: distinct identities over all the buckets
    ranked: list[tuple[str, dict[str, int]]]  #: the top identities by cost, then requests, then name


def user_figures(users: Mapping[tuple[int, str], Mapping[str, int]], grain: str, top: int) -> UserFigures:
    """:class:`UserFigures` from per-(bucket, identity) counters."""
    per_bucket: dict[int, set[str]] = {}
    per_day: dict[int, set[str]] = {}
    totals: dict[str, dict[str, int]] = {}
    for (b, identity), counts in users.items():
        per_bucket.setdefault(b, set()).add(identity)
        per_day.setdefault(b * GRAINS[grain] // DAY, set()).add(identity)
        t = totals.setdefault(identity, dict.fromkeys(USER_METRICS, 0))
        for k, v in counts.items():
            t[k] = t.get(k, 0) + v
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1]["cost_micro"], -kv[1]["requests"], kv[0]))[:top]
    return UserFigures({b: len(s) for b, s in per_bucket.items()}, {d: len(s) for d, s in per_day.items()}, len(totals), ranked)


@dataclass
class Cells:
    """Aggregates over the buckets of one grain; keys start with the bucket number."""

    grain: str
    models: dict[tuple[int, str, str], dict[str, int]] = field(default_factory=dict)
    errors: dict[tuple[int, str], int] = field(default_factory=dict)
    users: dict[tuple[int, str], dict[str, int]] = field(default_factory=dict)
    ttfb: dict[tuple[int, str], Histogram] = field(default_factory=dict)
    queue: dict[int, Histogram] = field(default_factory=dict)
    user_figures: UserFigures | None = None  #: when the store counted users itself (``users`` is then empty)

    def add_model(self, key: tuple[int, str, str], counts: Mapping[str, int]) -> None:
        cell = self.models.setdefault(key, dict.fromkeys(MODEL_METRICS, 0))
        for k, v in counts.items():
            cell[k] = cell.get(k, 0) + v

    def add_user(self, key: tuple[int, str], counts: Mapping[str, int]) -> None:
        cell = self.users.setdefault(key, dict.fromkeys(USER_METRICS, 0))
        for k, v in counts.items():
            cell[k] = cell.get(k, 0) + v

    def add_error(self, key: tuple[int, str], n: int) -> None:
        self.errors[key] = self.errors.get(key, 0) + n

    def add_ttfb(self, key: tuple[int, str], ms: int, n: int) -> None:
        h = self.ttfb.setdefault(key, {})
        h[ms] = h.get(ms, 0) + n

    def add_queue(self, bucket: int, ms: int, n: int) -> None:
        h = self.queue.setdefault(bucket, {})
        h[ms] = h.get(ms, 0) + n

    def add_record(self, rec: Mapping[str, Any]) -> None:
        b = bucket_of(float(rec["timestamp"]), self.grain)
        provider, model, identity = str(rec.get("provider")), str(rec.get("model")), str(rec.get("identity"))
        counts = record_counts(rec)
        self.add_model((b, provider, model), counts)
        self.add_user(
            (b, identity), {"requests": 1, "tokens": counts["input_tokens"] + counts["output_tokens"], "cost_micro": counts["cost_micro"]}
        )
        if rec.get("error_type"):
            self.add_error((b, str(rec["error_type"])), 1)
        if rec.get("ttfb_ms") is not None:
            self.add_ttfb((b, provider), ms_bin(float(rec["ttfb_ms"])), 1)
        if rec.get("queue_ms") is not None:
            self.add_queue(b, ms_bin(float(rec["queue_ms"])), 1)


def cells_from_records(records: Iterable[Mapping[str, Any]], grain: str, first: int, last: int) -> Cells:
    """The cells of buckets ``first..last`` from a store's records (for stores without aggregates)."""
    cells = Cells(grain)
    for rec in records:
        b = bucket_of(float(rec["timestamp"]), grain)
        if first <= b <= last:
            cells.add_record(rec)
    return cells


def percentile(hist: Mapping[int, int], p: int) -> int | None:
    """Nearest rank: the smallest value with at least ``ceil(p/100 * n)`` values at or below it
    (integer arithmetic, so no rounding decides a rank)."""
    n = sum(hist.values())
    if not n:
        return None
    rank = max(1, -(-p * n // 100))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)  # pragma: no cover - rank <= n
