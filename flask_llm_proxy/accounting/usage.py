"""Accounting for every proxied request: cost, budgets, the ledger, the signal, metrics, the log.

The quota is charged when a stream ends, before its last bytes; the rest runs from
:meth:`Exchange.finalize` once the server wrote them, so none of it delays a token or the end of
the stream (a next request on the same keep-alive connection is read after it). A store write that
needs no wait (SQLite, no lock held) is done at once; any other runs in its own greenlet under
gevent (SQLite's on the thread pool). A failing store is logged and counted and never breaks a
response.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

from flask import Flask

from .. import _json, signals
from .._compat import run_blocking, spawn
from ..config import Settings
from ..errors import BudgetExceeded, ServiceUnavailable
from .exchange import Exchange, UsageRecord
from .inflight import default_host_name
from .ledger import open_store
from .metrics import get_metrics, observe
from .pricing import PriceTable
from .store import NullStore, Store, period_starts
from .writeahead import WriteAhead

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
        self.write_ahead = WriteAhead(
            self.store,
            self.prices,
            enabled=settings.write_ahead,
            host=settings.host_name or default_host_name(),
            lease=settings.worker_lease,
            max_stream_seconds=settings.max_stream_seconds,
        )
        self.write_ahead.on_error = self._count_store_error
        if self.write_ahead.enabled:
            # the boot sweep: requests of workers that died while none was watching (a host restarted)
            self.write_ahead.sweep(time.time(), announce=False)

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
                log.warning(
                    "usage store unavailable for the budget of %s (%s); serving (LLM_PROXY_FAIL_OPEN)", identity, type(exc).__name__
                )
                return
            log.error("usage store unavailable for the budget of %s (%s); refusing", identity, type(exc).__name__)
            raise ServiceUnavailable(
                "budgets cannot be checked right now; try again shortly", type="budget_unavailable", headers={"Retry-After": "5"}
            ) from None
        _, next_day, _, next_month = period_starts(now)
        # Every spent limit blocks until its own period ends: the refusal names the one that
        # blocks longest, so a client retrying after Retry-After is not refused again.
        spent = [
            (next_day if _BUDGET_PERIOD[k] == "daily" else next_month, k, lim)
            for k, lim in limits.items()
            if lim is not None and spend[k] >= lim
        ]
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
        """Before the upstream call: the exchange's in-flight record is in the store (write-ahead)."""
        ex.cost_fn = self.prices.cost
        if self.metrics is not None:
            self.metrics.inflight.labels(ex.request.provider).inc()
        self.write_ahead.begin(ex)

    def record(self, record: UsageRecord, ex: Exchange | None = None) -> UsageRecord:
        """The final record of ``ex``: replaces its in-flight record in the store."""
        if self.metrics is not None:
            first = record.provider if ex is None else (ex.request.fallback_from or ex.request.provider).split(":", 1)[0]
            self.metrics.inflight.labels(first).dec()  # the provider it was counted under at the start
        wal_id = self.write_ahead.end(ex) if ex is not None else None
        if not isinstance(self.store, NullStore):
            self._write_now(record, wal_id)
        self.announce(record)
        return record

    def announce(self, record: UsageRecord) -> None:
        """Metrics and the ``usage_recorded`` signal, once per record (a worker_lost one too)."""
        m = self.metrics
        if m is not None:
            provider = self.settings.providers.get(record.provider)
            observe(m, record, provider.label_for(record.model) if provider else "other")
        try:
            signals.usage_recorded.send(self.app, record=record)
        except Exception:  # noqa: BLE001 - a host's receiver must not break accounting
            log.exception("a usage_recorded receiver failed for %s", record.request_id)

    def log_line(self, record: UsageRecord, content: dict[str, Any] | None) -> None:
        if not request_log.isEnabledFor(logging.INFO):
            return
        line = {"event": "llm_proxy.request", **record.to_dict()}
        if content:
            line.update(content)
        request_log.info(_json.dumps_str(line))

    def _write_now(self, record: UsageRecord, wal_id: str | None) -> None:
        """The final write, here when it needs no wait, else in its own greenlet: a request on the
        same keep-alive connection is not held up by a lock or a Redis round trip."""
        try:
            done = self.store.try_finish(record, wal_id)
        except Exception as exc:  # noqa: BLE001
            self._write_failed(record, exc)
            return
        if done is None:
            spawn(self._write, record, wal_id)
        elif not done:
            self._lost_first(record)

    def _write(self, record: UsageRecord, wal_id: str | None = None) -> None:
        """Redis: cooperative sockets. SQLite: on the thread pool (a lock held by another
        process), never waiting on the gevent hub."""
        store = self.store
        try:
            done = run_blocking(store.finish, record, wal_id) if store.blocking else store.finish(record, wal_id)
            if not done:
                self._lost_first(record)
        except Exception as exc:  # noqa: BLE001
            self._write_failed(record, exc)

    def _lost_first(self, record: UsageRecord) -> None:
        log.warning(
            "request %s ended after a sweep had closed it as worker_lost (its worker missed its lease); that record stands",
            record.request_id,
        )

    def _write_failed(self, record: UsageRecord, exc: Exception) -> None:
        log.error("usage store failed to record request %s: %s: %s", record.request_id, type(exc).__name__, exc)
        self._count_store_error()

    def _count_store_error(self) -> None:
        if self.metrics is not None:
            self.metrics.ledger_errors.inc()
