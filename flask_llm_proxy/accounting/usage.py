"""Accounting for every proxied request: cost, budgets, the ledger, the signal, metrics, the log.

Runs once per request from :meth:`Exchange.finalize`, after the last byte was written, so none
of it delays a token. Store writes go to a thread pool under gevent; a failing store is logged
and counted and never breaks a response.
"""
from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

from flask import Flask

from .. import _json, signals
from .._compat import run_blocking, run_later, spawn
from ..config import Settings
from ..errors import BudgetExceeded, ServiceUnavailable
from .exchange import Exchange, UsageRecord
from .ledger import open_store
from .metrics import get_metrics, observe
from .pricing import PriceTable
from .store import NullStore, Store, period_starts

log = logging.getLogger("flask_llm_proxy")
request_log = logging.getLogger("flask_llm_proxy.requests")

_BUDGET_PERIOD = {"daily_usd": "daily", "daily_tokens": "daily", "monthly_usd": "monthly", "monthly_tokens": "monthly"}


class Accounting:
    def __init__(self, app: Flask, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.prices = PriceTable(settings.pricing)
        self.store: Store = open_store(settings.usage_store, app.instance_path, settings.usage_stream_maxlen)
        self.metrics = get_metrics() if settings.metrics else None

    # --- before the upstream call ------------------------------------------------------------

    def check_budget(self, identity: str) -> None:
        budgets = self.settings.budgets
        # an identity listed with {} is exempt from the default; a limit of None is no limit
        limits = budgets[identity] if identity in budgets else budgets.get("default")
        if not limits:
            return
        now = time.time()
        try:
            spend = run_blocking(self.store.spend, identity, now) if self.store.blocking else self.store.spend(identity, now)
        except Exception as exc:  # noqa: BLE001 - a store outage is the operator's to see
            if self.settings.fail_open:
                log.warning("usage store unavailable for the budget of %s (%s); serving (LLM_PROXY_FAIL_OPEN)", identity, type(exc).__name__)
                return
            log.error("usage store unavailable for the budget of %s (%s); refusing", identity, type(exc).__name__)
            raise ServiceUnavailable("budgets cannot be checked right now; try again shortly", type="budget_unavailable", headers={"Retry-After": "5"}) from None
        _, next_day, _, next_month = period_starts(now)
        # Every spent limit blocks until its own period ends: the refusal names the one that
        # blocks longest, so a client retrying after Retry-After is not refused again.
        spent = [(next_day if _BUDGET_PERIOD[k] == "daily" else next_month, k, lim)
                 for k, lim in limits.items() if lim is not None and spend[k] >= lim]
        if not spent:
            return
        resets, key, limit = max(spent, key=lambda s: s[0])  # the first listed among equals
        retry = max(1, math.ceil(resets - now))
        when = datetime.fromtimestamp(resets, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        unit = "USD" if key.endswith("usd") else "tokens"
        raise BudgetExceeded(
            f"{_BUDGET_PERIOD[key]} budget of {limit:g} {unit} is spent; it resets at {when}",
            headers={"Retry-After": str(retry)},
            extra={"retryAfter": retry, "resetsAt": when, "budget": key, "limit": limit},
        )

    # --- around the request ------------------------------------------------------------------

    def started(self, ex: Exchange) -> None:
        ex.cost_fn = self.prices.cost
        if self.metrics is not None:
            self.metrics.inflight.labels(ex.request.provider).inc()

    def record(self, record: UsageRecord) -> UsageRecord:
        m = self.metrics
        if m is not None:
            m.inflight.labels(record.provider).dec()
            provider = self.settings.providers.get(record.provider)
            observe(m, record, provider.label_for(record.model) if provider else "other")
        if self.store.blocking:
            run_later(self._write, record)  # SQLite: on the thread pool, never on the gevent hub
        elif not isinstance(self.store, NullStore):
            spawn(self._write, record)  # Redis: cooperative sockets, in its own greenlet
        try:
            signals.usage_recorded.send(self.app, record=record)
        except Exception:  # noqa: BLE001 - a host's receiver must not break accounting
            log.exception("a usage_recorded receiver failed for %s", record.request_id)
        return record

    def log_line(self, record: UsageRecord, content: dict[str, Any] | None) -> None:
        if not request_log.isEnabledFor(logging.INFO):
            return
        line = {"event": "llm_proxy.request", **record.to_dict()}
        if content:
            line.update(content)
        request_log.info(_json.dumps_str(line))

    def _write(self, record: UsageRecord) -> None:
        try:
            self.store.write(record)
        except Exception as exc:  # noqa: BLE001
            log.error("usage store failed to record request %s: %s: %s", record.request_id, type(exc).__name__, exc)
            if self.metrics is not None:
                self.metrics.ledger_errors.inc()
