"""``ProxyState``: what one app's proxy needs at request time, built once in ``init_app`` and kept
in ``app.extensions["llm_proxy"]``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from flask import Flask

from .access.limits import Limits
from .accounting.exchange import Exchange, UsageRecord
from .accounting.usage import Accounting
from .cache import ResponseCache
from .concurrency import Gate
from .config import Settings
from .hooks import Hooks
from .upstream.client import UpstreamClient

if TYPE_CHECKING:
    from flask_limiter import Limiter


class ProxyState:
    """The settings, the upstream client, the limits and the accounting of one app."""

    def __init__(self, app: Flask, settings: Settings, limiter: Limiter | None, hooks: Hooks | None = None) -> None:
        self.app = app  # the sender of signals sent after the request context is gone
        self.settings = settings
        self.hooks = hooks if hooks is not None else Hooks()  # the extension's: callbacks added later apply
        self.upstream = UpstreamClient(settings.pool_maxsize)
        self.limiter = limiter
        self.limits = (
            Limits(limiter, settings.rate_limit, settings.token_quota, settings.fail_open)
            if limiter is not None and (settings.rate_limit or settings.token_quota)
            else None
        )
        self.accounting = Accounting(app, settings)
        metrics = self.accounting.metrics
        #: the response cache (LLM_PROXY_CACHE_URL), or None
        self.cache = ResponseCache(settings, metrics) if settings.cache_url else None
        #: the concurrency cap with its wait (LLM_PROXY_MAX_CONCURRENT*), or None
        self.gate = Gate(settings, app.config, metrics) if settings.max_concurrent or settings.max_concurrent_per_user else None

    def check_allowance(self, identity: str, quota_spent: list[int] | None = None) -> None:
        """Quotas and budgets, before the upstream call: an exhausted user costs nothing.
        ``quota_spent``: the quota readings :meth:`Limits.hit_rate` returned, if any."""
        if self.limits is not None:
            self.limits.check_quota(identity, quota_spent)
        self.accounting.check_budget(identity)

    def attach(self, ex: Exchange, prompt_text: Callable[[], str]) -> None:
        """Account for ``ex`` exactly once, whenever and however it ends. ``prompt_text`` gives the
        prompt for the log line when ``LLM_PROXY_LOG_CONTENT`` is on (never computed otherwise)."""

        def account(record: UsageRecord) -> UsageRecord:
            if self.limits is not None:
                self.limits.charge_quota(record.identity, record.total_tokens)
            record = self.accounting.record(record)
            content = None
            if self.settings.log_content:
                content = {"prompt": prompt_text(), "completion": "".join(ex.call.text_parts or ())}
            self.accounting.log_line(record, content)
            return record

        ex.on_finalize(account)
        self.accounting.started(ex)
