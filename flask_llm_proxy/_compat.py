"""Running well under gevent and without it: blocking work off the hub, background work."""
from __future__ import annotations

from typing import Any, Callable


def gevent_active() -> bool:
    """True in a gevent-patched process (gunicorn's gevent worker patches at fork)."""
    try:
        from gevent.monkey import is_module_patched
    except ImportError:  # pragma: no cover - gevent is a dependency, but stay tolerant
        return False
    return bool(is_module_patched("socket"))


def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (SQLite) without stalling the worker's other streams."""
    if gevent_active():
        from gevent import get_hub

        return get_hub().threadpool.apply(fn, args)
    return fn(*args)


def run_later(fn: Callable[..., Any], *args: Any) -> None:
    """Fire and forget on the thread pool under gevent; inline elsewhere (the response is done)."""
    if gevent_active():
        from gevent import get_hub

        get_hub().threadpool.spawn(fn, *args)
    else:
        fn(*args)


def spawn(fn: Callable[..., Any], *args: Any) -> None:
    """Fire and forget in a greenlet under gevent (cooperative I/O such as Redis); inline elsewhere."""
    if gevent_active():
        import gevent

        gevent.spawn(fn, *args)
    else:
        fn(*args)
