"""The example app with a stopwatch on each part of a request that its defaults add, for
``default_parts.py``. Not for production: each wrapped call costs about a microsecond more.

What is timed (wall time, which at concurrency 1 is the worker's CPU: none of these waits):

- ``identify``: who is asking; with the defaults, flask-jwt-extended's ``verify_jwt_in_request``,
  itself timed, and PyJWT's public ``jwt.decode`` / ``jwt.get_unverified_header`` under it, counted;
- ``Limits.hit_rate``: the rate limit's hit in flask-limiter's storage;
- ``Accounting.started``: the in-flight record (write-ahead) and the in-flight gauge;
- ``Accounting.record`` and ``Accounting.log_line``: the final ledger write, metrics and the
  ``usage_recorded`` signal, and the request's log line, after the last byte;
- every ``before_request``, ``after_request`` and ``teardown_request`` function of the app (the
  proxy's own, and those flask-limiter registers for its ``Limiter``);
- the garbage collector, per generation (``gc.callbacks``).

``GET /_parts`` answers ``{part: [calls, seconds]}`` since the last ``GET /_parts`` and starts over.
"""

from __future__ import annotations

import functools
import gc
import json
import time
from typing import Any

import flask_jwt_extended
import jwt

import flask_llm_proxy.web.chat as chat
from flask_llm_proxy.access.limits import Limits
from flask_llm_proxy.accounting.usage import Accounting

SPENT: dict[str, list[float]] = {}


def _add(label: str, seconds: float) -> None:
    spent = SPENT.setdefault(label, [0, 0.0])
    spent[0] += 1
    spent[1] += seconds


def _timed(label: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(label, time.perf_counter() - started)

    return timed


chat.identify = _timed("identify", chat.identify)
# auth.py imports it from flask_jwt_extended when called: time it where it is looked up
flask_jwt_extended.verify_jwt_in_request = _timed("verify_jwt_in_request", flask_jwt_extended.verify_jwt_in_request)
jwt.decode = _timed("pyjwt", jwt.decode)
jwt.get_unverified_header = _timed("pyjwt", jwt.get_unverified_header)
Limits.hit_rate = _timed("hit_rate", Limits.hit_rate)  # type: ignore[method-assign]
Accounting.started = _timed("started", Accounting.started)  # type: ignore[method-assign]
Accounting.record = _timed("record", Accounting.record)  # type: ignore[method-assign]
Accounting.log_line = _timed("log_line", Accounting.log_line)  # type: ignore[method-assign]

from example_app.wsgi import app  # noqa: E402

_gc_started = [0.0]


def _gc(phase: str, info: dict[str, Any]) -> None:
    """The collector's own time (``gc.callbacks``), by generation."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    _add(f"gc{info['generation']}", time.perf_counter() - _gc_started[0])


gc.callbacks.append(_gc)


def _name(fn: Any) -> str:
    fn = getattr(fn, "func", fn)  # a functools.partial
    return f"{fn.__module__.split('.')[0]} {fn.__qualname__.replace('__', '')}"


# every function the app runs around each request (the host's and its extensions' hooks)
for _registry in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
    for _funcs in _registry.values():
        _funcs[:] = [_timed(f"hook {_name(f)}", f) for f in _funcs]


class _Stopwatch:
    """WSGI middleware: a request from the server's call to its first body chunk, and the body's
    ``close()``, which the server calls once it has written the last byte."""

    def __init__(self, wsgi: Any) -> None:
        self.wsgi = wsgi

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        started = time.perf_counter()
        return _TimedBody(self.wsgi(environ, start_response), started)


class _TimedBody:
    def __init__(self, body: Any, started: float) -> None:
        self.body = body
        self.chunks = iter(body)
        self.started = started
        self.first = True

    def __iter__(self) -> _TimedBody:
        return self

    def __next__(self) -> bytes:
        chunk: bytes = next(self.chunks)
        if self.first and chunk:
            self.first = False
            _add("first chunk", time.perf_counter() - self.started)
        return chunk

    def close(self) -> None:
        started = time.perf_counter()
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        _add("close", time.perf_counter() - started)


app.wsgi_app = _Stopwatch(app.wsgi_app)  # type: ignore[method-assign]


@app.get("/_parts")
def parts() -> Any:
    out = json.dumps(SPENT)
    SPENT.clear()
    return app.response_class(out, mimetype="application/json")


__all__ = ["app"]
