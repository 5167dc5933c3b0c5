"""Timeouts and retries before the first byte, for the client and for failover alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a request reaches its upstream: the timeouts of each attempt, and the retries before the
    first byte. Made once from the settings (``LLM_PROXY_CONNECT_TIMEOUT``, ``..._READ_TIMEOUT``,
    ``..._MAX_RETRIES``, ``..._RETRY_BACKOFF``, ``..._RETRY_AFTER_MAX``), not per request."""

    connect_timeout: float
    read_timeout: float
    max_retries: int
    backoff: float  #: the first wait; each next one doubles
    retry_after_max: float  #: a longer ``retry-after`` than this is the client's to wait, not ours

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def delay(self, retries: int, retry_after: float | None) -> float | None:
        """The wait before the next attempt after ``retries`` retries, or None: no more attempts."""
        if retries >= self.max_retries or (retry_after is not None and retry_after > self.retry_after_max):
            return None
        delay = self.backoff * (2**retries)
        return delay if retry_after is None else max(delay, retry_after)
