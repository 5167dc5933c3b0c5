"""The "queue" (``LLM_PROXY_MAX_CONCURRENT*``): a cap on upstream calls in flight, with a bounded,
first-come-first-served wait for a slot.

Not a job queue: a streaming answer has to be written by the process that holds the browser's
connection, so no other worker can take a request over. What is shared is the count: a request
takes a slot of its provider (and of its identity, with a per-user cap) before it calls the
upstream, waits in arrival order while none is free, and gives it back the moment its stream ends
in any way (its record is made). Counted on Redis for the fleet (:mod:`.redis_slots`), or in this
process (:mod:`.local`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from .._compat import watch_client_close
from ..config import Settings
from ..errors import ProxyError, ServiceUnavailable
from .local import LocalSlots

log = logging.getLogger("flask_llm_proxy")

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class QueueTimeout(ServiceUnavailable):
    type = "queue_timeout"


class Gone:
    """Set when the client closed its connection while its request waited for a slot."""

    __slots__ = ("_set", "_events")

    def __init__(self) -> None:
        self._set = False
        self._events: list[Any] = []

    def set(self) -> None:
        self._set = True
        for ev in self._events:
            ev.set()

    def is_set(self) -> bool:
        return self._set

    def link(self, event: Any) -> None:
        self._events.append(event)

    def unlink(self, event: Any) -> None:
        if event in self._events:
            self._events.remove(event)


def queue_url(settings: Settings, app_config: Mapping[str, Any]) -> tuple[str, bool]:
    """(URL, chosen by default): ``LLM_PROXY_QUEUE_URL``, else the limiter's Redis, else memory."""
    if settings.queue_url:
        return settings.queue_url, False
    limiter_uri = str(app_config.get("RATELIMIT_STORAGE_URI") or "")
    if limiter_uri.startswith(_REDIS_SCHEMES):
        return limiter_uri, True
    return "memory://", True


class Gate:
    """The slots one app's requests take; built when a cap is configured."""

    def __init__(self, settings: Settings, app_config: Mapping[str, Any], metrics: Any = None) -> None:
        self.caps = dict(settings.max_concurrent)
        self.per_user = settings.max_concurrent_per_user
        self.timeout = settings.queue_timeout
        self.fail_open = settings.fail_open
        self.metrics = metrics
        url, default = queue_url(settings, app_config)
        if url.startswith(_REDIS_SCHEMES):
            from .redis_slots import RedisSlots

            self.slots: Any = RedisSlots(url, settings.queue_lease)
        else:
            self.slots = LocalSlots()
            msg = (
                "LLM_PROXY_MAX_CONCURRENT%s is counted per worker process (no Redis: set LLM_PROXY_QUEUE_URL or "
                "RATELIMIT_STORAGE_URI to a redis:// URL for a fleet-wide cap)" % ("_PER_USER" if not self.caps else "")
            )
            (log.warning if default else log.info)(msg)
        self._down = False

    def enter(self, ex: Any, provider: str, identity: str, environ: Mapping[str, Any]) -> None:
        """Take the slots ``ex``'s upstream call needs, waiting for them if none is free; they
        are given back when ``ex`` is accounted for. Raises a 503 ``queue_timeout``, a 499
        ``client_closed`` (the client left while waiting), or ``limits_unavailable`` (Redis down,
        unless ``LLM_PROXY_FAIL_OPEN``)."""
        wanted = []
        if self.per_user:
            wanted.append((f"u:{identity}", self.per_user))
        cap = self.caps.get(provider)
        if cap:
            wanted.append((f"p:{provider}", cap))
        if not wanted:
            return
        started = time.perf_counter()
        gone = Gone()
        watching: list[Any] = []
        m = self.metrics

        def on_wait() -> None:  # only when it has to wait: the watcher costs a greenlet
            if not watching:
                watching.append(watch_client_close(environ, gone.set))
                if m is not None:
                    m.queue_waiting.labels(provider).inc()

        try:
            release = self.slots.acquire(self.slots.ticket(), wanted, time.monotonic() + self.timeout, gone, on_wait)
        except (TimeoutError, ConnectionAbortedError) as exc:
            waited = self._waited(ex, provider, started)
            if isinstance(exc, ConnectionAbortedError):
                ex.call.client_aborted = True
                raise ProxyError("the client closed the connection while waiting for a slot", status=499, type="client_closed") from None
            retry = max(1, math.ceil(min(self.timeout, 30.0)))
            raise QueueTimeout(
                f"no upstream slot for '{provider}' came free within {self.timeout:g} s; the proxy is at its concurrency limit",
                headers={"Retry-After": str(retry)},
                extra={"retryAfter": retry, "waitedMs": round(waited)},
            ) from None
        except Exception as exc:  # noqa: BLE001 - the slots' Redis is down
            self._outage(exc)
            return
        finally:
            if watching:
                cancel = watching[0]
                if cancel is not None:
                    cancel()
                if m is not None:
                    m.queue_waiting.labels(provider).dec()
        if self._down:
            self._down = False
            log.warning("queue: Redis is back; the concurrency cap applies again")
        self._waited(ex, provider, started)

        def give_back(record: Any) -> None:
            try:
                release()
            except Exception as exc:  # noqa: BLE001 - the lease returns it anyway
                log.warning("queue: could not give a slot back (%s); its lease returns it", type(exc).__name__)

        ex.on_finalize(give_back)

    def _waited(self, ex: Any, provider: str, started: float) -> float:
        waited = (time.perf_counter() - started) * 1000.0
        ex.call.queue_ms = round(waited, 1)
        if self.metrics is not None:
            self.metrics.queue_seconds.labels(provider).observe(waited / 1000.0)
        return waited

    def _outage(self, exc: BaseException) -> None:
        if self.fail_open:
            if not self._down:
                log.warning("queue: Redis unavailable (%s); serving without the concurrency cap (LLM_PROXY_FAIL_OPEN)", type(exc).__name__)
            self._down = True
            return
        log.error("queue: Redis unavailable (%s); refusing requests (LLM_PROXY_FAIL_OPEN is off)", type(exc).__name__)
        raise ServiceUnavailable(
            "usage limits cannot be checked right now; try again shortly", type="limits_unavailable", headers={"Retry-After": "5"}
        ) from None
