"""gunicorn server hooks: call them from your ``gunicorn.conf.py``.

::

    def child_exit(server, worker):
        from flask_llm_proxy.gunicorn import child_exit
        child_exit(server, worker)

    def post_worker_init(worker):
        from flask_llm_proxy.gunicorn import post_worker_init
        post_worker_init(worker)

``child_exit`` runs in gunicorn's master, which has no Flask app (unless ``--preload``): it finds
the usage store from ``usage_store=``, else the ``LLM_PROXY_USAGE_STORE`` environment variable
(set it for gunicorn, as the example app does), else the preloaded app. It closes the dead
worker's in-flight requests as ``worker_lost`` records at once, so the ledger and the budgets
(which read the store) are right; it cannot send the ``usage_recorded`` signal, count metrics or
charge the token quota (they belong to the workers' app): a worker's next sweep does that, once,
for every record the master closed. Importing this module imports the package: do it inside the
hook, or after ``gevent.monkey.patch_all()``, as ``example_app/gunicorn.conf.py`` does.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger("flask_llm_proxy")

#: gunicorn's ``worker_connections`` of this worker, once :func:`post_worker_init` ran
WORKER_CONNECTIONS: int | None = None
#: what a worker is assumed to hold when gunicorn did not say: gunicorn's own default
GUNICORN_DEFAULT_WORKER_CONNECTIONS = 1000

_stores: dict[str, Any] = {}
_warned: set[str] = set()


def child_exit(
    server: Any, worker: Any, *, usage_store: str | None = None, instance_path: str | None = None, host_name: str | None = None
) -> int:
    """Master side: record the requests a worker that just died had in flight (``worker_lost``).

    ``usage_store``: the ``LLM_PROXY_USAGE_STORE`` URI, when the environment does not have it;
    ``instance_path``: the app's instance folder, for a relative ``sqlite:///`` path or the
    default store; ``host_name``: ``LLM_PROXY_HOST_NAME``, likewise. Returns how many were
    closed; never raises (the master must go on).
    """
    try:
        store = _store(server, usage_store, instance_path)
        if store is None or not store.write_ahead or not _env_bool("LLM_PROXY_WRITE_AHEAD", True):
            return 0
        from .accounting.inflight import default_host_name

        host = host_name or os.environ.get("LLM_PROXY_HOST_NAME") or default_host_name()
        closed = int(store.close_worker(host, worker.pid))
        if closed:
            log.warning("worker %s died with %d request(s) in flight: recorded as worker_lost", worker.pid, closed)
        return closed
    except Exception as exc:  # noqa: BLE001 - a hook must never stop gunicorn's master
        log.error(
            "flask_llm_proxy child_exit: the in-flight requests of worker %s could not be closed (%s: %s); "
            "a worker's sweep closes them later",
            getattr(worker, "pid", "?"),
            type(exc).__name__,
            exc,
        )
        return 0


def post_worker_init(worker: Any) -> None:
    """Worker side, once the app is loaded: tell the proxy the worker's ``worker_connections``
    (the default of ``LLM_PROXY_MAX_STREAMS_PER_WORKER`` derives from it) and start the loop that
    keeps in-flight records up to date and sweeps, so a new worker announces the ``worker_lost``
    records of the one it replaces without waiting for a request."""
    global WORKER_CONNECTIONS
    connections = getattr(getattr(worker, "cfg", None), "worker_connections", None)
    if isinstance(connections, int) and connections > 0:
        WORKER_CONNECTIONS = connections
    from .accounting.writeahead import INSTANCES

    for wa in list(INSTANCES):
        wa.watch()


def _store(server: Any, usage_store: str | None, instance_path: str | None) -> Any:
    uri = usage_store or os.environ.get("LLM_PROXY_USAGE_STORE") or None
    if uri is None:
        app = getattr(getattr(server, "app", None), "callable", None)  # gunicorn --preload: the loaded app
        state = getattr(app, "extensions", {}).get("llm_proxy") if app is not None else None
        if state is not None:
            return state.accounting.store
        if instance_path is None:
            _warn_once(
                "no usage store known: set LLM_PROXY_USAGE_STORE in gunicorn's environment, or pass usage_store= "
                "or instance_path=; a worker's sweep closes a dead worker's requests instead"
            )
            return None
    if uri == "none":
        return None
    relative = uri is None or (uri.startswith("sqlite:///") and not os.path.isabs(uri[len("sqlite:///") :]))
    if relative and instance_path is None:
        _warn_once(f"LLM_PROXY_USAGE_STORE {uri!r} is relative to the app's instance folder: pass instance_path=")
        return None
    key = f"{uri}\0{instance_path}"
    store = _stores.get(key)
    if store is None:
        from .accounting.ledger import open_store

        store = _stores[key] = open_store(uri, instance_path or "", _stream_maxlen())
    return store


def _stream_maxlen() -> int | None:
    raw = os.environ.get("LLM_PROXY_USAGE_STREAM_MAXLEN")
    if raw is None:
        return 1_000_000
    value = _decoded(raw)
    return int(value) if value not in (None, "", "None") else None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return str(_decoded(raw)).strip().lower() not in ("0", "false", "no", "off")


def _decoded(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("flask_llm_proxy child_exit: %s", message)
