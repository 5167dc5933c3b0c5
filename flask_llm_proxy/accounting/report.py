"""The operator's summary of a time range: what the admin page, its JSON and CSV, and
``flask llm-proxy report`` show, computed from a store's aggregates (:mod:`.cells`).

A range is a whole number of buckets: the last 24 hours are the current hour and the 23 before
it (UTC), 7 or 30 days are today and the days before it, a custom range is whole UTC days. Both
stores aggregate by the same buckets, so the figures are exact, not sampled or interpolated.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from .cells import CANCELLED, DAY, GRAINS, HOUR, MODEL_METRICS, Cells, percentile, user_figures
from .store import Store

#: the largest custom range, in days (the Redis store keeps its daily aggregates 400 days)
MAX_DAYS = 400
MAX_HOURS = 72
_RANGE_RE = re.compile(r"^\s*(\d{1,3})\s*([hd])\s*$")


class RangeError(ValueError):
    """A range the summary cannot be computed for; ``param`` names the query parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True)
class Range:
    name: str  #: ``24h``, ``7d``, ... or ``custom``
    grain: str  #: ``hour`` or ``day``
    first: int  #: the first bucket (hours or days since the epoch)
    last: int  #: the last bucket, included

    @property
    def since(self) -> float:
        return float(self.first * GRAINS[self.grain])

    @property
    def until(self) -> float:
        """The end of the last bucket (excluded)."""
        return float((self.last + 1) * GRAINS[self.grain])


def parse_range(value: str | None = None, since: str | None = None, until: str | None = None, now: float | None = None) -> Range:
    """``value``: ``<n>h`` (at most 72) or ``<n>d`` (at most 400), ending now; or ``since`` and
    optionally ``until``, ISO dates (``YYYY-MM-DD``, UTC days, both included). Default ``7d``."""
    now = time.time() if now is None else now
    if since or until:
        if value:
            raise RangeError("range", "give either range or since/until, not both")
        if not since:
            raise RangeError("since", "until needs a since (an ISO date, e.g. 2026-11-01)")
        first = _day_number(since, "since")
        last = _day_number(until, "until") if until else int(now // DAY)
        if last < first:
            raise RangeError("until", f"{until} is before since {since}")
        if last - first + 1 > MAX_DAYS:
            raise RangeError("since", f"a range is at most {MAX_DAYS} days; this one is {last - first + 1}")
        return Range("custom", "day", first, last)
    value = value or "7d"
    m = _RANGE_RE.match(value)
    if not m:
        raise RangeError("range", f"{value!r}: use 24h, 7d, 30d (<n>h up to {MAX_HOURS}, <n>d up to {MAX_DAYS}) or since/until")
    n, unit = int(m.group(1)), m.group(2)
    limit = MAX_HOURS if unit == "h" else MAX_DAYS
    if not 1 <= n <= limit:
        raise RangeError("range", f"{value!r}: between 1{unit} and {limit}{unit}")
    grain = "hour" if unit == "h" else "day"
    last = int(now // GRAINS[grain])
    return Range(f"{n}{unit}", grain, last - n + 1, last)


def _day_number(text: str, param: str) -> int:
    try:
        d = date.fromisoformat(text.strip())
    except ValueError:
        raise RangeError(param, f"{text!r} is not an ISO date (YYYY-MM-DD)") from None
    return (d - date(1970, 1, 1)).days


def label(bucket: int, grain: str) -> str:
    dt = datetime.fromtimestamp(bucket * GRAINS[grain], timezone.utc)
    return dt.strftime("%Y-%m-%d") if grain == "day" else dt.strftime("%Y-%m-%dT%H:00Z")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usd(micro: int) -> float:
    return round(micro / 1_000_000, 6)


def _rate(n: int, total: int) -> float | None:
    return round(n / total, 4) if total else None


def _merge(into: dict[int, int], hist: Mapping[int, int]) -> None:
    for ms, n in hist.items():
        into[ms] = into.get(ms, 0) + n


def _times(hist: Mapping[int, int]) -> dict[str, Any]:
    return {"count": sum(hist.values()), "p50_ms": percentile(hist, 50), "p95_ms": percentile(hist, 95)}


class _Group:
    """Everything of one bucket (or of the whole range) while the cells are folded into it."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(MODEL_METRICS, 0)
        self.by_model: dict[str, dict[str, int]] = {}
        self.errors: dict[str, int] = {}
        self.active = 0  #: distinct identities (set from the store's user figures)
        self.ttfb: dict[str, dict[int, int]] = {}
        self.queue: dict[int, int] = {}

    def merge(self, other: _Group) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
        for m, counts in other.by_model.items():
            mine = self.by_model.setdefault(m, dict.fromkeys(MODEL_METRICS, 0))
            for k, v in counts.items():
                mine[k] += v
        for t, n in other.errors.items():
            self.errors[t] = self.errors.get(t, 0) + n
        for p, hist in other.ttfb.items():
            _merge(self.ttfb.setdefault(p, {}), hist)
        _merge(self.queue, other.queue)

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "requests": c["requests"],
            "active_users": self.active,
            "input_tokens": c["input_tokens"],
            "output_tokens": c["output_tokens"],
            "cost_usd": _usd(c["cost_micro"]),
            "unpriced": c["unpriced"],
            "estimated": c["estimated"],
            "errors": c["errors"],
            "error_rate": _rate(c["errors"], c["requests"]),
            "cancelled": c["cancelled"],
            "cached": c["cached"],
            "cache_hit_rate": _rate(c["cached"], c["requests"]),
            "worker_lost": c["worker_lost"],
            "errors_by_type": dict(sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_model": {
                m: {
                    "requests": v["requests"],
                    "input_tokens": v["input_tokens"],
                    "output_tokens": v["output_tokens"],
                    "cost_usd": _usd(v["cost_micro"]),
                }
                for m, v in sorted(self.by_model.items())
            },
            "ttfb": {p: _times(h) for p, h in sorted(self.ttfb.items())},
            "queue": _times(self.queue),
        }


def _fold(cells: Cells, groups: Mapping[int, _Group]) -> None:
    """Each cell into the group of its bucket (cells outside the range are left out)."""
    for (b, _provider, model), counts in cells.models.items():
        g = groups.get(b)
        if g is None:
            continue
        per_model = g.by_model.setdefault(model, dict.fromkeys(MODEL_METRICS, 0))
        for k, v in counts.items():
            if k in g.counts:
                g.counts[k] += v
                per_model[k] += v
    for (b, error_type), n in cells.errors.items():
        g = groups.get(b)
        if g is not None and error_type != CANCELLED:
            g.errors[error_type] = g.errors.get(error_type, 0) + n
    for (b, provider), hist in cells.ttfb.items():
        g = groups.get(b)
        if g is not None:
            _merge(g.ttfb.setdefault(provider, {}), hist)
    for b, hist in cells.queue.items():
        g = groups.get(b)
        if g is not None:
            _merge(g.queue, hist)


def _budget(identity: str, budgets: Mapping[str, Mapping[str, float | None]], store: Store, now: float) -> dict[str, Any] | None:
    """How much of each budget the identity has spent in its current period (what the budget check sees)."""
    limits = budgets[identity] if identity in budgets else budgets.get("default")
    limits = {k: v for k, v in (limits or {}).items() if v is not None}
    if not limits:
        return None
    spend = store.spend(identity, now)
    return {k: {"limit": lim, "spent": round(spend[k], 6), "share": round(spend[k] / lim, 4) if lim else None} for k, lim in limits.items()}


def summarize_range(
    store: Store, rng: Range, *, budgets: Mapping[str, Any] | None = None, top: int = 10, now: float | None = None
) -> dict[str, Any]:
    """The summary of ``rng`` from ``store`` (blocking: SQLite reads its file)."""
    now = time.time() if now is None else now
    cells = store.aggregates(rng.grain, rng.first, rng.last, top)
    uf = cells.user_figures or user_figures(cells.users, rng.grain, top)
    buckets = {b: _Group() for b in range(rng.first, rng.last + 1)}
    _fold(cells, buckets)
    total = _Group()
    for b, g in buckets.items():
        g.active = uf.active.get(b, 0)
        total.merge(g)
    total.active = uf.active_total
    series = [{"bucket": label(b, rng.grain), **g.as_dict()} for b, g in buckets.items()]
    out: dict[str, Any] = {
        "range": {"name": rng.name, "grain": rng.grain, "since": _iso(rng.since), "until": _iso(rng.until), "buckets": len(buckets)},
        "generated_at": _iso(now),
    }
    totals = total.as_dict()
    out.update({k: v for k, v in totals.items() if k not in ("by_model", "ttfb")})
    out["ttfb_by_provider"] = totals["ttfb"]
    cost = total.counts["cost_micro"]
    out["by_model"] = [
        {
            "model": m,
            "requests": v["requests"],
            "input_tokens": v["input_tokens"],
            "output_tokens": v["output_tokens"],
            "cost_usd": _usd(v["cost_micro"]),
            "share_of_cost": _rate(v["cost_micro"], cost),
        }
        for m, v in sorted(total.by_model.items(), key=lambda kv: (-kv[1]["cost_micro"], -kv[1]["requests"], kv[0]))
    ]
    ranked = uf.ranked[:top]
    out["top_users"] = [
        {
            "identity": identity,
            "requests": u["requests"],
            "tokens": u["tokens"],
            "cost_usd": _usd(u["cost_micro"]),
            "share_of_cost": _rate(u["cost_micro"], cost),
            "budget": _budget(identity, budgets or {}, store, now),
        }
        for identity, u in ranked
    ]
    for u in out["top_users"]:
        shares = [b["share"] for b in (u["budget"] or {}).values() if b["share"] is not None]
        u["budget_share"] = max(shares) if shares else None
    out["models"] = [m["model"] for m in out["by_model"]]
    out["providers"] = sorted({p for (_, p) in cells.ttfb} | {p for (_, p, _) in cells.models})
    if rng.grain == "hour":
        out["by_hour"] = series
        days: dict[int, _Group] = {}
        for b, g in buckets.items():
            days.setdefault(b * HOUR // DAY, _Group()).merge(g)
        for d, g in days.items():
            g.active = uf.active_days.get(d, 0)
        out["by_day"] = [{"bucket": label(d, "day"), **g.as_dict()} for d, g in days.items()]
    else:
        out["by_day"] = series
    out["table"] = table(out)
    return out


def table(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One row per bucket: the page's table, its CSV export and the CLI report print these."""
    providers = list(summary["ttfb_by_provider"])
    columns = [
        "bucket",
        "requests",
        "active_users",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "errors",
        "error_rate",
        "cancelled",
        "cached",
        "cache_hit_rate",
        "worker_lost",
        "queue_p50_ms",
        "queue_p95_ms",
    ]
    for p in providers:
        columns += [f"ttfb_p50_ms:{p}", f"ttfb_p95_ms:{p}"]
    rows = []
    for e in summary.get("by_hour") or summary["by_day"]:
        row = [
            e["bucket"],
            e["requests"],
            e["active_users"],
            e["input_tokens"],
            e["output_tokens"],
            e["cost_usd"],
            e["errors"],
            e["error_rate"],
            e["cancelled"],
            e["cached"],
            e["cache_hit_rate"],
            e["worker_lost"],
            e["queue"]["p50_ms"],
            e["queue"]["p95_ms"],
        ]
        for p in providers:
            t = e["ttfb"].get(p) or {}
            row += [t.get("p50_ms"), t.get("p95_ms")]
        rows.append(row)
    return {"columns": columns, "rows": rows}


def to_csv(summary: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    t = summary["table"]
    w.writerow(t["columns"])
    for row in t["rows"]:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6f}".rstrip("0").rstrip(".") if v else "0"
    return str(v)


def _grid(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    cells = [header] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def to_text(summary: Mapping[str, Any]) -> str:
    """The report for a terminal (``flask llm-proxy report``)."""
    s, r = summary, summary["range"]
    out = [f"{r['name']} by {r['grain']}: {r['since']} .. {r['until']} (UTC)", ""]
    ttfb = ", ".join(f"{p} p50 {_fmt(t['p50_ms'])} ms p95 {_fmt(t['p95_ms'])} ms" for p, t in s["ttfb_by_provider"].items()) or "-"
    out += [
        f"requests        {s['requests']}   active users {s['active_users']}",
        f"tokens          {s['input_tokens']} in, {s['output_tokens']} out",
        f"cost            {_fmt(s['cost_usd'])} USD" + (f" ({s['unpriced']} requests without a price)" if s["unpriced"] else ""),
        f"errors          {s['errors']} (rate {_fmt(s['error_rate'])})   cancelled {s['cancelled']}   worker lost {s['worker_lost']}",
        f"cached          {s['cached']} (hit rate {_fmt(s['cache_hit_rate'])})   queued {s['queue']['count']}"
        f" (p50 {_fmt(s['queue']['p50_ms'])} ms, p95 {_fmt(s['queue']['p95_ms'])} ms)",
        f"first token     {ttfb}",
        "",
    ]
    t = s["table"]
    out += _grid(t["columns"], t["rows"]) + [""]
    if s["top_users"]:
        out += _grid(
            ["top user", "requests", "tokens", "cost_usd", "share_of_cost", "budget_share"],
            ([u["identity"], u["requests"], u["tokens"], u["cost_usd"], u["share_of_cost"], u["budget_share"]] for u in s["top_users"]),
        )
        out.append("")
    if s["by_model"]:
        out += _grid(
            ["model", "requests", "input_tokens", "output_tokens", "cost_usd", "share_of_cost"],
            ([m["model"], m["requests"], m["input_tokens"], m["output_tokens"], m["cost_usd"], m["share_of_cost"]] for m in s["by_model"]),
        )
        out.append("")
    if s["errors_by_type"]:
        out += _grid(["error type", "requests"], ([k, v] for k, v in s["errors_by_type"].items()))
    return "\n".join(out).rstrip() + "\n"
