"""Write-ahead accounting: every open request has an in-flight record in the usage store.

:meth:`WriteAhead.begin` writes it before the upstream call; once a second one loop per process
(:class:`Watch`) writes the counts that changed, renews the worker's lease, ends the streams that
ran past ``LLM_PROXY_MAX_STREAM_SECONDS``, and now and then sweeps: it closes the in-flight
records of dead workers as ``worker_lost`` and announces closed ones (quota, metrics, the
``usage_recorded`` signal) exactly once. The token path itself does nothing for any of this: the
loop reads the counters the relay keeps anyway.
"""

from __future__ import annotations

import logging
import os
import random
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._compat import make_event, run_blocking, spawn_reader
from .exchange import CHARS_PER_TOKEN, Exchange, UsageRecord
from .inflight import InflightEntry
from .pricing import PriceTable
from .store import Store

log = logging.getLogger("flask_llm_proxy")

TICK = 1.0  #: seconds between two updates of the in-flight records (the issue's "at most once a second")
PAUSE_AFTER_FAILURE = 5.0  #: seconds without write-ahead after the store failed a begin (no pile-up of timeouts)
TAKE = 100  #: closed records announced per store call


class WriteAhead:
    """The in-flight records of one app's open requests in this process."""

    def __init__(
        self, store: Store, prices: PriceTable, *, enabled: bool, host: str, lease: float, max_stream_seconds: float | None
    ) -> None:
        self.store = store
        self.prices = prices
        self.enabled = enabled and store.write_ahead
        self.host = host
        self.lease = lease
        self.max_stream_seconds = max_stream_seconds
        self.sweep_every = min(15.0, lease / 4)
        #: open exchange -> its in-flight record (None: not written ahead)
        self.open: dict[Exchange, InflightEntry | None] = {}
        #: ``fn(record)`` for each closed worker_lost record: quota, metrics, signal (ProxyState)
        self.on_lost: Callable[[UsageRecord], None] = lambda record: None
        #: ``fn()`` when the store failed (the ledger_errors metric)
        self.on_error: Callable[[], None] = lambda: None
        self._pid = os.getpid()
        self._watched = -1
        self._paused_until = 0.0
        self._next_sweep = 0.0  # the first tick of a process sweeps: the boot sweep
        INSTANCES.add(self)

    # --- per request ---------------------------------------------------------------------------

    def watch(self) -> None:
        """Start this process's loop now (gunicorn's ``post_worker_init``) rather than at the first
        request, so a new worker sweeps and announces at once."""
        if self._watched != os.getpid():
            self._watched = os.getpid()
            WATCH.add(self)

    def begin(self, ex: Exchange) -> None:
        """Register an exchange before its upstream call, with its in-flight record in the store."""
        pid = os.getpid()
        if pid != self._pid:  # forked (gunicorn --preload): the parent's requests are not ours
            self._pid = pid
            self.open.clear()
        self.open[ex] = None  # counted at once (load shedding), before the store write yields
        if self.enabled and time.monotonic() >= self._paused_until:
            entry = self._entry(ex, pid)
            try:
                if not self.store.try_begin(entry):
                    self._call(self.store.begin, entry)
            except Exception as exc:  # noqa: BLE001 - a store outage must not refuse the request
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
                log.error(
                    "usage store failed to write an in-flight record (%s); requests are served without one for %.0f s",
                    type(exc).__name__,
                    PAUSE_AFTER_FAILURE,
                )
                self.on_error()
            else:
                self.open[ex] = entry
        if self._watched != pid:
            self.watch()

    def end(self, ex: Exchange) -> str | None:
        """Unregister an exchange at its end; returns its write-ahead id for the final write."""
        entry = self.open.pop(ex, None)
        return entry.wal_id if entry is not None else None

    def _entry(self, ex: Exchange, pid: int) -> InflightEntry:
        req = ex.request
        price = self.prices.price_of(req.model)
        return InflightEntry(
            wal_id=f"{self.host}|{pid}|{random.getrandbits(64):016x}",
            request_id=req.request_id,
            identity=req.identity,
            provider=req.provider,
            model=req.model,
            endpoint=req.endpoint,
            input_tokens=max(1, req.input_chars // CHARS_PER_TOKEN),
            output_tokens=0,
            price_in=price["input"] if price else None,
            price_out=price["output"] if price else None,
            host=self.host,
            pid=pid,
            started=req.wall_started,
            updated=time.time(),
        )

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return run_blocking(fn, *args) if self.store.blocking else fn(*args)

    # --- once a second (Watch) -----------------------------------------------------------------

    def tick(self, now_perf: float, now_mono: float, now: float) -> None:
        if self.max_stream_seconds:
            self._cut_expired(now_perf - self.max_stream_seconds)
        if not self.enabled:
            return
        items = list(self.open.items())
        if any(entry is not None for _, entry in items):
            changed = [entry for ex, entry in items if entry is not None and _refresh(ex, entry)]
            try:
                # At once on this thread when the ledger is free. In the thread pool this update
                # (a row per open stream) held the write lock 5-8 times longer, waiting for the GIL
                # between rows, and requests starting meanwhile waited 50-190 ms for their own
                # record in SQLite's busy wait. Here, with 500 streams open, it holds the loop for
                # 2 to 4 ms a second and no request waits.
                if not self.store.try_progress(self.host, os.getpid(), changed, now):
                    self._call(self.store.progress, self.host, os.getpid(), changed, now)
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.warning("usage store failed to update in-flight records (%s)", type(exc).__name__)
        if now_mono >= self._next_sweep:
            self._next_sweep = now_mono + self.sweep_every
            self.sweep(now)

    def _cut_expired(self, started_before: float) -> None:
        for ex in list(self.open):
            if ex.request.started < started_before:
                call = ex.call
                call.expired = self.max_stream_seconds
                cut = getattr(call.resp, "cut", None)  # an upstream stream being read (UpstreamBody); idempotent
                if cut is not None:
                    cut()

    def sweep(self, now: float, *, announce: bool = True) -> None:
        """Close the in-flight records of dead workers, then announce the closed ones (also those
        gunicorn's master closed, which has no app to announce them with)."""
        try:
            closed = self._call(self.store.close_dead, self.host, self.lease, now)
            if closed:
                log.warning("closed %d in-flight request(s) of dead workers as worker_lost", closed)
            while announce:
                records = self._call(self.store.take_lost, TAKE)
                for record in records:
                    try:
                        self.on_lost(record)
                    except Exception:  # noqa: BLE001
                        log.exception("announcing the worker_lost record %s failed", record.request_id)
                if len(records) < TAKE:
                    break
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.error("the sweep of dead workers' in-flight records failed (%s)", type(exc).__name__)


def _refresh(ex: Exchange, entry: InflightEntry) -> bool:
    """Copy what the exchange knows now into its entry; whether anything changed."""
    req, call = ex.request, ex.call
    out, inp = call.tokens_streamed, entry.input_tokens
    t = call.translator
    if t is not None:
        u = t.usage
        out = max(out, u.output_tokens)
        inp = u.input_tokens or inp
    now = (inp, out, req.provider, req.model, call.deployment, req.fallback_from)
    if now == (entry.input_tokens, entry.output_tokens, entry.provider, entry.model, entry.deployment, entry.fallback_from):
        return False
    entry.input_tokens, entry.output_tokens, entry.provider, entry.model, entry.deployment, entry.fallback_from = now
    return True


class Watch:
    """One loop per process (a greenlet under gevent, else a daemon thread) for every app's
    :class:`WriteAhead`; started by the first request, or by gunicorn's ``post_worker_init``."""

    def __init__(self) -> None:
        self.members: weakref.WeakSet[WriteAhead] = weakref.WeakSet()
        self._pid = -1

    def add(self, wa: WriteAhead) -> None:
        self.members.add(wa)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            spawn_reader(self._run)

    def _run(self) -> None:
        pid = os.getpid()
        pause = make_event()  # never set: its timed wait is the tick (gevent's in a patched process)
        while self._pid == pid:
            pause.wait(TICK)
            now_perf, now_mono, now = time.perf_counter(), time.monotonic(), time.time()
            for wa in list(self.members):
                try:
                    wa.tick(now_perf, now_mono, now)
                except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                    log.exception("the in-flight records' update failed")


WATCH = Watch()
#: every WriteAhead of this process (gunicorn's post_worker_init starts their loop)
INSTANCES: weakref.WeakSet[WriteAhead] = weakref.WeakSet()
