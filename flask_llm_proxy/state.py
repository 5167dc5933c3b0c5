"""``ProxyState``: what one app's proxy needs at request time, built once in ``init_app`` and kept
in ``app.extensions["llm_proxy"]``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from flask import Flask

from .access.limits import Limits
from .accounting.exchange import Exchange, UsageRecord
from .accounting.usage import Accounting
from .cache import ResponseCache
from .concurrency import Gate
from .config import Settings
from .errors import Overloaded
from .hooks import Hooks
from .upstream.client import UpstreamClient
from .upstream.retry import RetryPolicy

if TYPE_CHECKING:
    from flask_limiter import Limiter

log = logging.getLogger("flask_llm_proxy")

SHED_RETRY_AFTER = "2"  #: seconds a shed request is told to wait: streams end and free places all the time


class ProxyState:
    """The settings, the upstream client, the limits and the accounting of one app."""

    def __init__(self, app: Flask, settings: Settings, limiter: Limiter | None, hooks: Hooks | None = None) -> None:
        self.app = app  # the sender of signals sent after the request context is gone
        self.settings = settings
        self.hooks = hooks if hooks is not None else Hooks()  # the extension's: callbacks added later apply
        self.upstream = UpstreamClient(settings.pool_maxsize)
        self.retries = RetryPolicy(
            settings.connect_timeout, settings.read_timeout, settings.max_retries, settings.retry_backoff, settings.retry_after_max
        )
        self.limiter = limiter
        self.limits = (
            Limits(limiter, settings.rate_limit, settings.token_quota, settings.fail_open)
            if limiter is not None and (settings.rate_limit or settings.token_quota)
            else None
        )
        if self.limits is not None:
            self.limits.switched_off()  # said at start when known by now
        self.accounting = Accounting(app, settings)
        metrics = self.accounting.metrics
        #: the response cache (LLM_PROXY_CACHE_URL), or None
        self.cache = ResponseCache(settings, metrics) if settings.cache_url else None
        #: the concurrency cap with its wait (LLM_PROXY_MAX_CONCURRENT*), or None
        self.gate = Gate(settings, app.config, metrics) if settings.max_concurrent or settings.max_concurrent_per_user else None
        self.accounting.write_ahead.on_lost = self._account_lost
        self._cap_pid = -1
        self._cap = 0
        self._admitting = 0  # requests past check_capacity, not yet open in write_ahead (they may yield meanwhile)
        self._shed_logged = 0.0

    def check_capacity(self) -> None:
        """Load shedding, first thing in a request: past ``LLM_PROXY_MAX_STREAMS_PER_WORKER`` open
        requests in this worker a new one gets 503 ``overloaded`` at once, rather than every stream
        of the worker slowing down."""
        if self._cap_pid != os.getpid():  # after gunicorn's post_worker_init told worker_connections
            self._cap_pid = os.getpid()
            self._cap = stream_cap(self.settings)
        if self._cap and len(self.accounting.write_ahead.open) + self._admitting >= self._cap:
            now = time.monotonic()
            if now - self._shed_logged > 10:
                self._shed_logged = now
                log.warning(
                    "worker %d serves %d requests (LLM_PROXY_MAX_STREAMS_PER_WORKER): new ones get 503 overloaded", os.getpid(), self._cap
                )
            raise Overloaded("this server is at capacity; retry shortly", headers={"Retry-After": SHED_RETRY_AFTER})

    @contextmanager
    def admission(self) -> Iterator[None]:
        """:meth:`check_capacity`, then count the request as open while it is checked (reading its
        body and the budget may yield to other requests of the worker) until :meth:`attach` opens
        it or it is refused: a burst cannot slip past the cap between the check and the open. Call
        :meth:`attach` right after the block, with no yield between."""
        self.check_capacity()
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    def check_allowance(self, identity: str, quota_spent: list[int] | None = None) -> None:
        """Quotas and budgets, before the upstream call: an exhausted user costs nothing.
        ``quota_spent``: the quota readings :meth:`Limits.hit_rate` returned, if any."""
        if self.limits is not None:
            self.limits.check_quota(identity, quota_spent)
        self.accounting.check_budget(identity)

    def attach(self, ex: Exchange, prompt_text: Callable[[], str]) -> None:
        """Account for ``ex`` exactly once, whenever and however it ends. ``prompt_text`` gives the
        prompt for the log line when ``LLM_PROXY_LOG_CONTENT`` is on (never computed otherwise)."""

        def charge(record: UsageRecord) -> None:
            if self.limits is not None:  # before the stream ends: the next request sees it
                self.limits.charge_quota(record.identity, record.total_tokens)

        def account(record: UsageRecord) -> UsageRecord:
            record = self.accounting.record(record, ex)
            content = None
            if self.settings.log_content:
                content = {"prompt": prompt_text(), "completion": "".join(ex.call.text_parts or ())}
            self.accounting.log_line(record, content)
            return record

        ex.on_finalize(charge)
        ex.on_finalize(account, after_response=True)  # ledger, metrics, signal, log line
        self.accounting.started(ex)

    def _account_lost(self, record: UsageRecord) -> None:
        """A worker_lost record (already in the store, so in the budgets): the quota, metrics, the
        signal and the log line, as any other request gets them."""
        if self.limits is not None:
            self.limits.charge_quota(record.identity, record.total_tokens)
        self.accounting.announce(record)
        self.accounting.log_line(record, None)


def stream_cap(settings: Settings) -> int:
    """``LLM_PROXY_MAX_STREAMS_PER_WORKER``, or its default: gunicorn's ``worker_connections`` (as
    ``flask_llm_proxy.gunicorn.post_worker_init`` read it, else gunicorn's default of 1000) minus a
    tenth, at least 10, kept for health checks, metrics and the 503 answers themselves. 0: none."""
    if settings.max_streams_per_worker is not None:
        return settings.max_streams_per_worker
    from . import gunicorn as hooks

    connections = hooks.WORKER_CONNECTIONS or hooks.GUNICORN_DEFAULT_WORKER_CONNECTIONS
    return max(1, connections - max(10, connections // 10))
