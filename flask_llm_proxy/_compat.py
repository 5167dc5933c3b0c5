"""Running well under gevent and without it, and the one place that reaches past a library's
public API: ``ssl_patch_problem`` (urllib3), ``limiter_key_prefix`` (Flask-Limiter),
``redis_incr_and_get`` (limits) and ``watch_client_close`` (gunicorn's ``gunicorn.socket`` environ
key). ``tests/test_compat.py`` fails loudly when an upgrade breaks one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flask_llm_proxy")


_PATCHED = False


def gevent_active() -> bool:
    """True in a gevent-patched process (gunicorn's gevent worker patches at fork). Asked several
    times per request; a process, once patched, stays patched, so only "not yet" is asked again."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        from gevent.monkey import is_module_patched
    except ImportError:  # pragma: no cover - gevent is a dependency, but stay tolerant
        return False
    _PATCHED = bool(is_module_patched("socket"))
    return _PATCHED


def make_event() -> Any:
    """An event to wait on with a timeout: gevent's in a patched process, else threading's."""
    if gevent_active():
        from gevent.event import Event

        return Event()
    return threading.Event()


def make_wakeup() -> Any:
    """What one waiting greenlet (or thread) is woken with, by others of the same thread: a
    stream's greenlet by its reader, for each event. ``clear()`` before checking for work,
    ``wait()`` if there is none, ``set()`` to wake it. Under gevent a hub ``Waiter``, about 1 us
    less per hand-over than an ``Event`` (no list of links to run), else a ``threading.Event``."""
    return _GeventWakeup() if gevent_active() else threading.Event()


class _GeventWakeup:
    """``set()`` switches to the waiting greenlet at the hub's next turn; with nobody waiting it
    does nothing (the waiter checks for work before it waits, in the same run: nothing is lost).
    Only for greenlets of the hub's own thread (``loop.run_callback`` is not thread-safe)."""

    __slots__ = ("_waiter", "_loop", "_make")

    def __init__(self) -> None:
        from gevent import get_hub
        from gevent.hub import Waiter

        self._waiter: Any = None
        self._loop = get_hub().loop
        self._make = Waiter

    def clear(self) -> None:
        """Nothing to clear: a ``set()`` with nobody waiting is dropped."""

    def wait(self) -> None:
        waiter = self._waiter = self._make()
        try:
            waiter.get()
        finally:
            self._waiter = None

    def set(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._loop.run_callback(waiter.switch, None)


def spawn_reader(fn: Callable[[], None]) -> None:
    """Run ``fn`` beside the current request: a raw greenlet under gevent (``fn`` handles its own
    errors; no Greenlet object, links or exception reporting to pay for), else a daemon thread."""
    if gevent_active():
        import gevent

        gevent.spawn_raw(fn)
    else:
        threading.Thread(target=fn, daemon=True, name="llm-proxy-reader").start()


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


def readable_now(sock: Any) -> bool:
    """Whether ``sock`` has something to read right now (data, or the end of the connection),
    without waiting. urllib3 asks this of every pooled connection before reusing it; its
    ``select.poll`` is gevent's in a patched process, which sets up and tears down a watcher for
    a question the kernel answers at once, so this asks the original ``poll``
    (``gevent.monkey.get_original``)."""
    global _POLL
    if _POLL is None:
        import select

        _POLL = select.poll
        if gevent_active():
            from gevent.monkey import get_original

            _POLL = get_original("select", "poll")
    p = _POLL()
    p.register(sock.fileno(), 1)  # POLLIN
    return bool(p.poll(0))


_POLL: Any = None


def take_read_timeout(resp: Any) -> float | None:
    """Take the read timeout off the socket of a streamed response and return it (None when it
    has none, or no socket: a mocked body). A socket with a timeout arms and cancels a timer for
    every wait, once per paced token; the stream's silence watch (one loop per process) keeps the
    timeout instead. urllib3 sets the socket's timeout again for the connection's next request.
    Reaches the socket through urllib3's ``HTTPResponse.connection`` and ``http.client``'s ``sock``."""
    conn = getattr(resp.raw, "connection", None)
    sock = getattr(conn, "sock", None) if conn is not None else None
    if sock is None:
        return None
    timeout: float | None = sock.gettimeout()
    if timeout is not None:
        sock.settimeout(None)
    return timeout


def spawn(fn: Callable[..., Any], *args: Any) -> None:
    """Fire and forget in a greenlet under gevent (cooperative I/O such as Redis); inline elsewhere."""
    if gevent_active():
        import gevent

        gevent.spawn(fn, *args)
    else:
        fn(*args)


def watch_client_close(environ: Any, on_close: Callable[[], None]) -> Callable[[], None] | None:
    """Call ``on_close()`` if the client closes its connection while the request waits before its
    response starts (for a slot). A write is how gunicorn notices a client that left; before the
    first one, this peeks at the socket gunicorn hands the app as ``environ["gunicorn.socket"]``:
    end of file means the client is gone (bytes mean it sent more, e.g. a pipelined request: the
    watch ends without a verdict). Under gevent and gunicorn only; returns the cancel, or None."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not gevent_active():
        return None
    import socket

    import gevent

    def watch() -> None:
        while True:
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:  # the socket's own timeout: no verdict, keep watching
                continue
            except OSError:
                data = b""
            if not data:
                on_close()
            return

    watcher = gevent.spawn(watch)
    return watcher.kill


GEVENT_SSL_FIX = (
    "gevent patched 'ssl' after urllib3 imported it (gunicorn --preload, or an import before the "
    "gevent worker started): HTTPS calls to the upstream fail with RecursionError. Fix: put "
    "'from gevent import monkey; monkey.patch_all()' on the first line of gunicorn.conf.py "
    "(example_app/gunicorn.conf.py does), or run without --preload."
)


def ssl_patch_problem() -> str | None:
    """Detect the gevent + ``--preload`` trap (gevent #1016) before it turns every HTTPS request
    into a RecursionError, and repair this process when it can.

    urllib3 keeps a module-level reference to the ``SSLContext`` class it imported; when gevent
    patched ``ssl`` later, that reference is the unpatched class. No public API re-points it, so
    this sets ``urllib3.util.ssl_.SSLContext`` (and the re-export in ``urllib3.util``) to the
    patched class. Returns the problem text when it could not be repaired.
    """
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover
        return None
    if not monkey.is_module_patched("ssl"):
        return None
    import ssl

    import urllib3.util as u3util
    import urllib3.util.ssl_ as u3ssl

    if getattr(u3ssl, "SSLContext", ssl.SSLContext) is ssl.SSLContext:
        return None
    for module in (u3ssl, u3util):
        if hasattr(module, "SSLContext"):
            module.SSLContext = ssl.SSLContext  # type: ignore[attr-defined]
    try:
        ctx = u3ssl.create_urllib3_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    except RecursionError:
        return GEVENT_SSL_FIX
    log.warning("%s (Repaired for this process by re-pointing urllib3 at gevent's SSLContext.)", GEVENT_SSL_FIX)
    return None


def limiter_key_prefix(limiter: Any) -> str:
    """The key prefix a Flask-Limiter ``Limiter`` puts before its keys (``RATELIMIT_KEY_PREFIX`` or
    its ``key_prefix=`` argument), so the proxy's counters live beside the host's. Flask-Limiter
    keeps it in ``_key_prefix`` and has no public accessor."""
    return str(getattr(limiter, "_key_prefix", "") or "")


def redis_incr_and_get(storage: Any, incr_key: str, expiry: int, get_keys: list[str]) -> tuple[int, list[int]] | None:
    """On limits' plain ``RedisStorage``: ``incr`` one counter (with its expiry, as limits does it)
    and read others, in one pipelined round trip instead of one per key (0.1-0.3 ms each). Uses
    the storage's connection, key prefixing and loaded Lua script, which limits does not expose
    publicly. ``None`` when the storage is another kind or the script is not loaded yet (the
    caller then counts through the public API, which loads it)."""
    from limits.storage import RedisStorage

    if type(storage) is not RedisStorage:
        return None
    no_script = getattr(getattr(storage.dependency, "exceptions", None), "NoScriptError", None)  # redis-py's or valkey's
    if no_script is None:
        return None
    pipe = storage.get_connection().pipeline(transaction=False)  # type: ignore[attr-defined, unused-ignore]
    pipe.evalsha(storage.lua_incr_expire.sha, 1, storage.prefixed_key(incr_key), expiry, 1)
    for key in get_keys:
        pipe.get(storage.prefixed_key(key))
    try:
        count, *readings = pipe.execute()
    except no_script:  # a new or flushed server: nothing was counted
        return None
    return int(count), [int(v or 0) for v in readings]
