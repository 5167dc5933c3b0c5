"""Slots counted in this process (``LLM_PROXY_QUEUE_URL = "memory://"``, or no Redis): the same
first-come-first-served wait as the fleet's, for one worker."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._compat import make_event


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = make_event()
        self.granted = False


class _Semaphore:
    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: deque[_Waiter] = deque()


class LocalSlots:
    """Per process. A freed slot goes straight to the first waiter (no thundering herd)."""

    shared = False

    def __init__(self) -> None:
        self._sems: dict[str, _Semaphore] = {}
        self._lock = threading.Lock()
        self._seq = 0

    def ticket(self) -> str:
        self._seq += 1
        return str(self._seq)

    def acquire(
        self, ticket: str, wanted: Sequence[tuple[str, int]], deadline: float, gone: Any, on_wait: Callable[[], None]
    ) -> Callable[[], None]:
        """Take one slot of each ``(name, cap)`` in order, waiting (FIFO) until ``deadline``
        (``time.monotonic()``) or until ``gone`` (an event) is set. Returns the release; raises
        :class:`TimeoutError` or :class:`ConnectionAbortedError`, holding nothing."""
        taken: list[str] = []
        try:
            for name, cap in wanted:
                self._take(name, cap, deadline, gone, on_wait)
                taken.append(name)
        except BaseException:
            for name in taken:
                self._release(name)
            raise

        def release() -> None:
            for name in taken:
                self._release(name)

        return release

    def _take(self, name: str, cap: int, deadline: float, gone: Any, on_wait: Callable[[], None]) -> None:
        with self._lock:
            sem = self._sems.get(name)
            if sem is None:
                sem = self._sems[name] = _Semaphore()
            if sem.held + len(sem.waiters) < cap:
                sem.held += 1
                return
            waiter = _Waiter()
            sem.waiters.append(waiter)
        on_wait()
        if gone is not None:
            gone.link(waiter.event)
        try:
            while not waiter.granted:
                left = deadline - time.monotonic()
                if left <= 0 or (gone is not None and gone.is_set()):
                    break
                waiter.event.wait(left)
        finally:
            if gone is not None:
                gone.unlink(waiter.event)
        with self._lock:
            if waiter.granted:
                return
            sem.waiters.remove(waiter)
        raise ConnectionAbortedError() if gone is not None and gone.is_set() else TimeoutError()

    def _release(self, name: str) -> None:
        with self._lock:
            sem = self._sems[name]
            while sem.waiters:
                waiter = sem.waiters.popleft()
                waiter.granted = True  # the slot passes on: held stays the same
                waiter.event.set()
                return
            sem.held -= 1
            if not sem.held:
                del self._sems[name]  # one entry per identity would otherwise stay forever
