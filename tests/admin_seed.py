"""A ledger to seed the operator page with, and its figures computed here, independently of
flask_llm_proxy.accounting (plain loops over the records, the documented rules written out again):
a figure the page shows is only right if both agree."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

MODELS = (("anthropic", "claude-sonnet-4-5", 3.0, 15.0), ("anthropic", "claude-haiku-4-5", 1.0, 5.0), ("openai", "gpt-4o", 2.5, 10.0))
USERS = ("alice", "bob", "carol", "dave", "<b>eve</b>")  # the last one: shown as text, never as markup
ERRORS = (None, None, None, "upstream_error", None, "client_closed", None, "timeout", None, None, "worker_lost", None)


def seed(now: float, *, big_ttfb: bool = False) -> list[dict[str, Any]]:
    """Records over the last 8 days, a few in the last hours, one 10 and one 40 days back.
    Times to first token are whole ms below 128 (the page shows them exactly) unless ``big_ttfb``."""
    day0 = math.floor(now / 86400) * 86400
    stamps = [now - 60 * k for k in range(1, 6)]  # the last minutes
    stamps += [now - 3600 * h - 17 for h in (2, 5, 11, 23, 25, 30)]
    stamps += [day0 - 86400 * d + 3600 * h + 61 for d in range(1, 8) for h in (1, 9, 14, 20) if (d * 7 + h) % 3]
    stamps += [day0 - 86400 * 10 + 7200, day0 - 86400 * 40 + 7200]
    out = []
    for i, ts in enumerate(stamps):
        provider, model, pin, pout = MODELS[(i * 5) % len(MODELS)]
        error = ERRORS[i % len(ERRORS)]
        inp, outp = 100 + 37 * i, 10 + (i * 13) % 90
        unpriced = i % 9 == 4
        ttfb = float(20 + (i * 29) % 100) if not big_ttfb else 20 + (i * 997.3) % 5000
        out.append(
            {
                "request_id": f"seed-{i}",
                "identity": USERS[(i * 3) % len(USERS)],
                "provider": provider,
                "model": model,
                "input_tokens": inp,
                "output_tokens": outp,
                "estimated": error == "client_closed",
                "cost_usd": None if unpriced else round((inp * pin + outp * pout) / 1e6, 6),
                "status": 200 if error in (None, "client_closed", "worker_lost") else 502,
                "error_type": error,
                "ttfb_ms": None if error in ("upstream_error", "timeout") else ttfb,
                "duration_ms": 900.0,
                "retries": 0,
                "finish_reason": "stop" if error is None else None,
                "cached": i % 4 == 1,
                "timestamp": ts,
            }
        )
    return out


def binned(ms: float) -> int:
    """The documented rounding of a time: whole ms, then 7 significant bits (64 steps per doubling)."""
    v = math.floor(ms + 0.5)
    if v < 128:
        return v
    step = 2 ** (math.floor(math.log2(v)) - 6)
    return math.floor((v + step / 2) / step) * step


def nearest_rank(values: list[int], p: int) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


def bucket_label(ts: float, grain: str) -> str:
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%d") if grain == "day" else dt.strftime("%Y-%m-%dT%H:00Z")


def figures(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    recs = list(records)
    ttfb: dict[str, list[int]] = {}
    for r in recs:
        if r["ttfb_ms"] is not None:
            ttfb.setdefault(r["provider"], []).append(binned(r["ttfb_ms"]))
    errors: dict[str, int] = {}
    for r in recs:
        if r["error_type"] and r["error_type"] != "client_closed":
            errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
    by_model: dict[str, dict[str, Any]] = {}
    for r in recs:
        m = by_model.setdefault(r["model"], {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0})
        m["requests"] += 1
        m["input_tokens"] += r["input_tokens"]
        m["output_tokens"] += r["output_tokens"]
        m["cost_usd"] = round(m["cost_usd"] + (r["cost_usd"] or 0), 6)
    n = len(recs)
    n_errors = sum(1 for r in recs if r["error_type"] and r["error_type"] != "client_closed")
    return {
        "requests": n,
        "active_users": len({r["identity"] for r in recs}),
        "input_tokens": sum(r["input_tokens"] for r in recs),
        "output_tokens": sum(r["output_tokens"] for r in recs),
        "cost_usd": round(sum(r["cost_usd"] or 0 for r in recs), 6),
        "unpriced": sum(1 for r in recs if r["cost_usd"] is None),
        "errors": n_errors,
        "cancelled": sum(1 for r in recs if r["error_type"] == "client_closed"),
        "cached": sum(1 for r in recs if r["cached"]),
        "worker_lost": sum(1 for r in recs if r["error_type"] == "worker_lost"),
        "errors_by_type": errors,
        "by_model": by_model,
        "ttfb": {p: {"count": len(v), "p50_ms": nearest_rank(v, 50), "p95_ms": nearest_rank(v, 95)} for p, v in ttfb.items()},
    }


def expected(records: list[dict[str, Any]], grain: str, labels: list[str]) -> dict[str, Any]:
    """Totals over the buckets ``labels`` and the figures of each bucket."""
    inside = [r for r in records if bucket_label(r["timestamp"], grain) in labels]
    per = {label: figures(r for r in inside if bucket_label(r["timestamp"], grain) == label) for label in labels}
    users: dict[str, dict[str, Any]] = {}
    for r in inside:
        u = users.setdefault(r["identity"], {"requests": 0, "tokens": 0, "cost_usd": 0.0})
        u["requests"] += 1
        u["tokens"] += r["input_tokens"] + r["output_tokens"]
        u["cost_usd"] = round(u["cost_usd"] + (r["cost_usd"] or 0), 6)
    return {"total": figures(inside), "buckets": per, "users": users}
