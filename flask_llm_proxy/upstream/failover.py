"""Several deployments of one provider (``"deployments": [...]``): which one a request goes to,
and failover before the first byte.

A request goes to the deployment with the fewest requests in flight in this process (the first
listed among equals). One that answers 429, 529 or 5xx, or cannot be reached, before the first
byte is left alone for its ``Retry-After`` (else ``LLM_PROXY_COOLDOWN``) and the request is sent
to the next one at once, without a backoff. Only when every deployment is cooling down does the
usual backoff apply (waiting for the first one to come back, within ``LLM_PROXY_MAX_RETRIES`` and
``LLM_PROXY_RETRY_AFTER_MAX``), and past it the typed error. The state is per worker process.
Deployments are named by label in every log line and error, never by key or URL.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import ProviderConfig
from ..errors import ProxyError

if TYPE_CHECKING:
    import requests

    from .retry import RetryPolicy

log = logging.getLogger("flask_llm_proxy")


class Deployments:
    """One provider's deployments in this process: requests in flight and cool-downs."""

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider
        self.items = provider.deployments
        self.inflight = [0] * len(self.items)
        self.cool_until = [0.0] * len(self.items)  # time.monotonic()
        self.cooled_by: list[ProxyError | None] = [None] * len(self.items)

    def pick(self, now: float) -> int | None:
        """The deployment with the fewest requests in flight among those not cooling down."""
        best = None
        for i, until in enumerate(self.cool_until):
            if until <= now and (best is None or self.inflight[i] < self.inflight[best]):
                best = i
        return best

    def index(self, label: str) -> int:
        return next(i for i, d in enumerate(self.items) if d.label == label)

    def release(self, i: int) -> None:
        self.inflight[i] -= 1

    def cool(self, i: int, err: ProxyError, retry_after: float | None, default: float, request_id: str) -> None:
        seconds = retry_after if retry_after is not None else default
        self.cool_until[i] = max(self.cool_until[i], time.monotonic() + seconds)
        self.cooled_by[i] = err
        log.warning(
            "request %s: deployment %r of '%s' failed before the first byte (%s); left alone for %.0f s",
            request_id or "-",
            self.items[i].label,
            self.provider.name,
            err.type,
            seconds,
        )

    def exhausted(self, last: ProxyError | None, remaining: float, retried: bool) -> ProxyError:
        """The typed error when every deployment is cooling down: this request's last failure, or,
        for a request that found them all cooling, one of the kind that cooled the first to return."""
        retry = max(1, math.ceil(remaining))
        note = f"every deployment of '{self.provider.name}' is cooling down; retry in {retry} s"
        if last is None:
            j = min(range(len(self.items)), key=self.cool_until.__getitem__)
            cause = self.cooled_by[j]
            status, etype = (cause.status, cause.type) if cause is not None else (503, "upstream_overloaded")
            last = ProxyError(f"{note} (after {etype})", status=status, type=etype)
        else:
            last.message = f"{last.message} ({note})"
        last.headers["Retry-After"] = str(retry)
        last.retried = retried
        return last


def open_failover(
    client: Any,  # the UpstreamClient (which imports this module)
    deps: Deployments,
    path: str,
    auth: Callable[[ProviderConfig], dict[str, str]],
    accept: str,
    body: bytes,
    *,
    secrets: Sequence[str],
    policy: RetryPolicy,
    cooldown: float,
    on_retry: Callable[[ProxyError], None] | None = None,
    request_id: str = "",
) -> tuple[requests.Response, int]:
    """Open the provider's answer on one of its deployments; returns it and the deployment's index,
    counted in flight until the caller calls ``deps.release(index)``."""
    waits = attempts = 0
    last: ProxyError | None = None
    while True:
        now = time.monotonic()
        i = deps.pick(now)
        if i is None:  # every deployment is cooling down: the usual backoff, or the typed error
            j = min(range(len(deps.items)), key=deps.cool_until.__getitem__)
            remaining = deps.cool_until[j] - now
            delay = policy.delay(waits, remaining)
            if delay is None:
                raise deps.exhausted(last, remaining, attempts > 0)
            waits += 1
            log.info(
                "request %s: every deployment of '%s' is cooling down; retrying in %.2fs", request_id or "-", deps.provider.name, delay
            )
            client.wait(delay)
            deps.cool_until[j] = min(deps.cool_until[j], time.monotonic())  # waited for it: it is back
            continue
        if last is not None and on_retry is not None:
            on_retry(last)
        attempts += 1
        d = deps.items[i]
        client.check_tls(d.base_url)
        target = client.target(d, path, auth(d), accept)
        deps.inflight[i] += 1
        resp, err, retryable, retry_after = client.attempt(target, body, secrets, policy.timeout, request_id)
        if resp is not None:
            return resp, i
        deps.release(i)
        assert err is not None
        if not retryable:
            err.retried = attempts > 1
            raise err
        deps.cool(i, err, retry_after, cooldown, request_id)
        last = err
