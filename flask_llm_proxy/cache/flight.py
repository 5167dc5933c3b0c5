"""Single flight in one process: while a request's answer streams live, identical requests read
the same chunks, from the start, as they arrive, instead of calling the upstream again.

A :class:`Flight` is the growing list of chunk batches of one live answer plus how it ended. The
request that calls the upstream writes it (:mod:`.tee`); every other reader (identical requests,
the publisher that copies it to Redis for other processes) waits on an event that is swapped per
batch only while someone reads, so a flight nobody follows costs a list append per batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .._compat import make_event
from ..errors import NetworkError, ProxyError
from .entry import Meta


class LeaderGone(Exception):
    """The request everyone waited on ended before its upstream answered (its client left, it
    timed out in the queue, ...): nothing was shared, so each follower asks again itself."""


class Flight:
    __slots__ = (
        "key",
        "batches",
        "meta",
        "error",
        "rejoin",
        "done",
        "opened",
        "readers",
        "remote",
        "publishing",
        "fleet",
        "ended_at",
        "_changed",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.batches: list[list[Any]] = []
        self.meta: Meta | None = None
        self.error: ProxyError | None = None
        self.rejoin = False  #: failed before any chunk, for a reason of its own request (not the upstream's)
        self.done = False
        self.opened = False  #: the upstream answers (from then on readers get keep-alives, and no rejoin)
        self.readers = 0
        self.remote = False  #: other processes asked for it (the publisher is one of the readers)
        self.publishing = False
        self.fleet = False  #: this process holds the fleet's lock for the key
        self.ended_at = 0.0
        self._changed = make_event()

    # --- the writer ------------------------------------------------------------------------------

    def open(self) -> None:
        self.opened = True

    def add(self, batch: list[Any]) -> None:
        self.opened = True
        self.batches.append(batch)
        if self.readers:
            self._wake()

    def finish(self, meta: Meta) -> None:
        self.meta = meta
        self._end()

    def fail(self, err: ProxyError | None, *, rejoin: bool = False) -> None:
        """``err`` None or ``rejoin``: the followers ask again (only before any chunk)."""
        if self.done:
            return
        self.error = err
        self.rejoin = (rejoin or err is None) and not self.opened
        self._end()

    def _end(self) -> None:
        self.done = True
        self.ended_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        ev = self._changed
        self._changed = make_event()
        ev.set()

    @property
    def watched(self) -> bool:
        """Someone besides the writer reads it: its answer is worth finishing without its client."""
        return self.readers > 0 or self.remote

    # --- readers ---------------------------------------------------------------------------------

    def wait(self, seen: int, timeout: float | None) -> bool:
        """Block until there are more than ``seen`` batches or the flight ended; False on timeout.
        Only for registered readers (``readers`` counts them)."""
        ev = self._changed
        if len(self.batches) > seen or self.done:
            return True
        return bool(ev.wait(timeout))

    def read(self, keepalive: float | None) -> Iterator[list[Any] | None]:
        """Every batch from the first, then the end: returns after a finished flight, raises the
        flight's error (or :class:`LeaderGone`). ``None`` per ``keepalive`` of silence once the
        upstream answers; before, nothing (the wait ends in a first batch, an error status, or a
        :class:`LeaderGone` the caller can still act on, its response not started)."""
        self.readers += 1
        try:
            seen = 0
            while True:
                while seen < len(self.batches):
                    batch = self.batches[seen]
                    seen += 1
                    yield batch
                if self.done:
                    if self.error is None and self.meta is not None:
                        return
                    if self.rejoin:
                        raise LeaderGone()
                    raise self.error or NetworkError("the identical request this answer was shared from ended early")
                if not self.wait(seen, keepalive if self.opened else None):
                    yield None
        finally:
            self.readers -= 1


class Flights:
    """The live flights of one cache in this process, by key."""

    def __init__(self) -> None:
        self.live: dict[str, Flight] = {}
        self.recent: dict[str, Flight] = {}  #: ended fleet flights other processes may still ask for

    def lead_or_join(self, key: str) -> tuple[Flight, bool]:
        flight = self.live.get(key)
        if flight is not None and not flight.done:
            return flight, False
        flight = self.live[key] = Flight(key)
        return flight, True

    def retire(self, flight: Flight, keep: float = 0.0) -> None:
        """Drop an ended flight; ``keep`` seconds more among the recent ones (fleet flights)."""
        if self.live.get(flight.key) is flight:
            del self.live[flight.key]
        if keep:
            self.prune(keep)
            self.recent[flight.key] = flight

    def prune(self, keep: float) -> None:
        now = time.monotonic()
        for k, f in list(self.recent.items()):
            if now - f.ended_at > keep:
                del self.recent[k]

    def find(self, key: str) -> Flight | None:
        return self.live.get(key) or self.recent.get(key)
