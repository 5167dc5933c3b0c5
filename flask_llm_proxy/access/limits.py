"""Per-identity request rate limits and token quotas on flask-limiter's storage.

The checks run inside the proxy view, after authentication, so an unauthenticated request is
never counted and every storage failure is ours to answer: 503 (``LLM_PROXY_FAIL_OPEN = False``)
or a logged pass (``True``), never a 500 or a hang. Storage, strategy and key prefix are the
``Limiter``'s own (``RATELIMIT_STORAGE_URI``, ``RATELIMIT_STRATEGY``, ``RATELIMIT_KEY_PREFIX``), so
a fleet sharing one Redis shares the counters and two apps with different prefixes do not. Token
quotas use a fixed window: it can charge a cost larger than what is left (a request that overran
its quota), which a moving window would refuse to record.

Each check is a storage round trip on every request (0.1-0.3 ms of worker CPU each on Redis), so
a fixed-window rate limit (flask-limiter's default strategy) is counted with one ``incr``: its
count gives what is left, and the window's end is known from the hit that opened it. On a plain
Redis (``redis://``) one rate limit's count and the token quota's reading share one pipelined
round trip, before the body is read; the quota check later in the request uses that reading.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from limits import parse_many
from limits.strategies import FixedWindowRateLimiter

from .._compat import limiter_key_prefix, redis_incr_and_get
from ..errors import QuotaExceeded, RateLimited, ServiceUnavailable

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
        self._window_ends: dict[str, float] = {}  # storage key -> when its fixed window resets
        self._window_storage: Any = None  # the storage those ends were read from
        self._said_off = False

    def switched_off(self) -> bool:
        """flask-limiter's switch for every limit of the app (``RATELIMIT_ENABLED = False``, as a
        host's tests often set it) switches the proxy's off too: such a ``Limiter`` has no storage
        to count in. Said once, the first time it is seen."""
        if self.limiter.enabled:
            return False
        if not self._said_off:
            self._said_off = True
            log.warning("RATELIMIT_ENABLED is False: LLM_PROXY_RATE_LIMIT and LLM_PROXY_TOKEN_QUOTA are not enforced")
        return True

    def _ids(self, namespace: str, identity: str) -> tuple[str, ...]:
        prefix = limiter_key_prefix(self.limiter)  # RATELIMIT_KEY_PREFIX, as flask-limiter applies it
        return (prefix, namespace, identity) if prefix else (namespace, identity)

    def _quota(self) -> FixedWindowRateLimiter:
        if self._quota_strategy is None or self._quota_strategy.storage is not self.limiter.storage:
            self._quota_strategy = FixedWindowRateLimiter(self.limiter.storage)
        return self._quota_strategy

    def hit_rate(self, identity: str) -> tuple[dict[str, str], list[int] | None]:
        """Count one request; return the X-RateLimit-* headers, and the token quota's readings when
        they came in the same round trip (pass them to :meth:`check_quota`), or raise
        :class:`RateLimited`."""
        if not self.rate_items or self.switched_off():
            return {}, None
        spent = None
        try:
            strategy = self.limiter.limiter
            ids = self._ids(RATE_NS, identity)
            worst: tuple[int, float, Any] | None = None
            fixed = type(strategy) is FixedWindowRateLimiter
            counted = self._one_round_trip(strategy.storage, ids, identity) if fixed else None
            count, spent = counted if counted is not None else (None, None)  # counted: one rate limit
            for item in self.rate_items:
                if fixed:
                    ok, remaining, reset = self._hit_fixed(strategy.storage, item, ids, count)
                else:  # moving or sliding window: the strategy's own bookkeeping
                    ok = strategy.hit(item, *ids)
                    reset, remaining = strategy.get_window_stats(item, *ids)
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
            return {}, None
        assert worst is not None
        return _headers(worst[2], worst[0], worst[1]), spent

    def _one_round_trip(self, storage: Any, ids: tuple[str, ...], identity: str) -> tuple[int, list[int]] | None:
        """On a plain Redis (or Valkey) with one rate limit and a token quota: the rate count and
        the quota readings (in ``quota_items`` order) in one round trip; ``None`` (the caller
        counts one by one) anywhere else. Several rate limits are counted one by one, so that a
        request refused by one is not counted in the next (as flask-limiter does)."""
        if not self.quota_items or len(self.rate_items) != 1:
            return None
        (item,) = self.rate_items
        quota_ids = self._ids(QUOTA_NS, identity)
        return redis_incr_and_get(storage, item.key_for(*ids), item.get_expiry(), [q.key_for(*quota_ids) for q in self.quota_items])

    def _hit_fixed(self, storage: Any, item: Any, ids: tuple[str, ...], count: int | None = None) -> tuple[bool, int, float]:
        """What ``FixedWindowRateLimiter.hit`` + ``get_window_stats`` tell, in one round trip
        (none when ``count`` was already counted by :meth:`_one_round_trip`).

        A window's end is remembered per worker from the hit that opened it. If the counter is
        cleared early (``Limiter.reset()``, a Redis flush) and another worker opens a new window,
        this worker's ``X-RateLimit-Reset`` is early until its remembered end passes; a refusal's
        ``Retry-After`` is always read from the storage.
        """
        if storage is not self._window_storage:  # flask-limiter switched to its fallback, or back
            self._window_ends.clear()
            self._window_storage = storage
        key = item.key_for(*ids)
        if count is None:
            count = storage.incr(key, item.get_expiry(), amount=1)
        now = time.time()
        if count == 1:  # this hit opened the window: it ends one period from now
            reset = now + item.get_expiry()
        else:
            reset = self._window_ends.get(key, 0.0)
            if reset <= now or count > item.amount:  # unknown, past, or about to be quoted in Retry-After
                reset = storage.get_expiry(key)
        if len(self._window_ends) >= 10_000:
            self._window_ends.clear()  # a bound on memory; a forgotten window costs one get_expiry
        self._window_ends[key] = reset
        return count <= item.amount, item.amount - count, reset

    def check_quota(self, identity: str, spent: list[int] | None = None) -> None:
        """Refuse before the upstream call when the identity's token quota is spent. ``spent``:
        the readings :meth:`hit_rate` already took for this identity, if it did."""
        if not self.quota_items or self.switched_off():
            return
        try:
            strategy = self._quota()
            ids = self._ids(QUOTA_NS, identity)
            for i, item in enumerate(self.quota_items):
                if not (spent[i] < item.amount if spent is not None else strategy.test(item, *ids)):
                    reset, _ = strategy.get_window_stats(item, *ids)
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
        if not self.quota_items or tokens <= 0 or self.switched_off():
            return
        try:
            strategy = self._quota()
            ids = self._ids(QUOTA_NS, identity)
            for item in self.quota_items:
                strategy.hit(item, *ids, cost=tokens)
        except Exception as exc:  # noqa: BLE001 - after the stream: log, never raise
            log.error("could not charge %d tokens to %s's quota: %s", tokens, identity, type(exc).__name__)


def _headers(item: Any, remaining: int, reset: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": str(max(0, int(remaining))),
        "X-RateLimit-Reset": str(int(reset)),
    }
