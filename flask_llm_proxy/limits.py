"""Per-identity request rate limits and token quotas on flask-limiter's storage.

The checks run inside the proxy view, after authentication, so an unauthenticated request is
never counted and every storage failure is ours to answer: 503 (``LLM_PROXY_FAIL_OPEN = False``)
or a logged pass (``True``), never a 500 or a hang. Storage, strategy and key prefix are the
``Limiter``'s own (``RATELIMIT_STORAGE_URI``, ``RATELIMIT_STRATEGY`` ...), so a fleet sharing one
Redis shares the counters. Token quotas use a fixed window: it can charge a cost larger than what
is left (a request that overran its quota), which a moving window would refuse to record.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from limits import parse_many
from limits.strategies import FixedWindowRateLimiter

from .errors import QuotaExceeded, RateLimited, ServiceUnavailable

if TYPE_CHECKING:
    from flask_limiter import Limiter

log = logging.getLogger("flask_llm_proxy")

RATE_NS = "llm_proxy_requests"
QUOTA_NS = "llm_proxy_tokens"


def _storage_down(exc: BaseException, fail_open: bool, what: str) -> None:
    if fail_open:
        log.warning("rate-limit storage unavailable (%s: %s); serving unmetered (LLM_PROXY_FAIL_OPEN)", what, type(exc).__name__)
        return
    log.error("rate-limit storage unavailable (%s: %s); refusing requests (LLM_PROXY_FAIL_OPEN is off)", what, type(exc).__name__)
    raise ServiceUnavailable(
        "usage limits cannot be checked right now; try again shortly", type="limits_unavailable", headers={"Retry-After": "5"}
    ) from None


class Limits:
    def __init__(self, limiter: Limiter, rate: str | None, quota: str | None, fail_open: bool) -> None:
        self.limiter = limiter
        self.rate_items = parse_many(rate) if rate else []
        self.quota_items = parse_many(quota) if quota else []
        self.fail_open = fail_open
        self._quota_strategy: FixedWindowRateLimiter | None = None

    def _quota(self) -> FixedWindowRateLimiter:
        if self._quota_strategy is None or self._quota_strategy.storage is not self.limiter.storage:
            self._quota_strategy = FixedWindowRateLimiter(self.limiter.storage)
        return self._quota_strategy

    def hit_rate(self, identity: str) -> dict[str, str]:
        """Count one request; return the X-RateLimit-* headers or raise :class:`RateLimited`."""
        if not self.rate_items:
            return {}
        try:
            strategy = self.limiter.limiter
            worst: tuple[int, float, Any] | None = None
            for item in self.rate_items:
                ok = strategy.hit(item, RATE_NS, identity)
                reset, remaining = strategy.get_window_stats(item, RATE_NS, identity)
                if not ok:
                    retry = max(1, math.ceil(reset - time.time()))
                    raise RateLimited(
                        f"rate limit of {item} exceeded; retry in {retry} s",
                        headers=_headers(item, 0, reset) | {"Retry-After": str(retry)},
                        extra={"retryAfter": retry},
                    )
                if worst is None or remaining < worst[0]:
                    worst = (remaining, reset, item)
        except RateLimited:
            raise
        except Exception as exc:  # noqa: BLE001 - redis/network errors of any kind
            _storage_down(exc, self.fail_open, "rate limit")
            return {}
        assert worst is not None
        return _headers(worst[2], worst[0], worst[1])

    def check_quota(self, identity: str) -> None:
        """Refuse before the upstream call when the identity's token quota is spent."""
        if not self.quota_items:
            return
        try:
            strategy = self._quota()
            for item in self.quota_items:
                if not strategy.test(item, QUOTA_NS, identity):
                    reset, _ = strategy.get_window_stats(item, QUOTA_NS, identity)
                    retry = max(1, math.ceil(reset - time.time()))
                    raise QuotaExceeded(
                        f"token quota of {item} used up; it resets in {retry} s",
                        headers={"Retry-After": str(retry)},
                        extra={"retryAfter": retry, "resetsAt": int(reset)},
                    )
        except QuotaExceeded:
            raise
        except Exception as exc:  # noqa: BLE001
            _storage_down(exc, self.fail_open, "token quota")

    def charge_quota(self, identity: str, tokens: int) -> None:
        """After the request: charge the real input + output tokens (also of a cut stream)."""
        if not self.quota_items or tokens <= 0:
            return
        try:
            strategy = self._quota()
            for item in self.quota_items:
                strategy.hit(item, QUOTA_NS, identity, cost=tokens)
        except Exception as exc:  # noqa: BLE001 - after the stream: log, never raise
            log.error("could not charge %d tokens to %s's quota: %s", tokens, identity, type(exc).__name__)


def _headers(item: Any, remaining: int, reset: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": str(max(0, int(remaining))),
        "X-RateLimit-Reset": str(int(reset)),
    }
