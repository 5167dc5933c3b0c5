"""``LLMProxy``: the Flask extension object.

``LLMProxy(app)`` or ``LLMProxy().init_app(app)``; one extension object may serve several apps,
each with its own settings, blueprint, limiter, ledger and metrics in
``app.extensions["llm_proxy"]`` (a :class:`~flask_llm_proxy.state.ProxyState`).
"""

from __future__ import annotations

import copy
import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Flask

from .access.cors import apply_cors
from .config import KEYS, PREFIX, load_settings
from .errors import ConfigError
from .hooks import Callback, Hooks
from .state import ProxyState
from .web.blueprint import make_blueprint

if TYPE_CHECKING:
    from flask_limiter import Limiter

log = logging.getLogger("flask_llm_proxy")


class LLMProxy:
    """The extension. ``limiter=`` a host's own flask-limiter ``Limiter`` to count with."""

    def __init__(self, app: Flask | None = None, *, limiter: Limiter | None = None) -> None:
        self._limiter = limiter
        self.hooks = Hooks()
        if app is not None:
            self.init_app(app)

    def identity_loader(self, fn: Callback) -> Callback:
        """Decorator: ``fn() -> str | None`` names who is asking when the host does not use JWTs
        (a Flask-Login session, an API-key header); ``None`` is a 401. Limits, quotas, budgets and
        the ledger use it. Register it before ``init_app`` when the app has no ``JWTManager``."""
        self.hooks.identity_loader = fn
        return fn

    def before_upstream(self, fn: Callback) -> Callback:
        """Decorator: ``fn(request, identity)`` runs after every check (profiles included), before
        quotas are reserved and the upstream is called. It may change ``request`` (mask PII, add
        context) or refuse it by raising a ``ProxyError`` (or ``werkzeug.exceptions.abort``): the
        client gets the proxy's error shape with the host's status and message."""
        self.hooks.before_upstream = fn
        return fn

    def admin_required(self, fn: Callback) -> Callback:
        """Decorator: ``fn(identity, claims) -> bool`` decides who may open the operator page
        (``LLM_PROXY_ADMIN``), instead of the ``LLM_PROXY_ADMIN_CLAIM`` JWT claim."""
        self.hooks.admin_required = fn
        return fn

    def init_app(self, app: Flask, *, limiter: Limiter | None = None) -> None:
        given = {k for k in app.config if k.startswith(PREFIX)}
        for key in KEYS:
            app.config.setdefault(key.name, copy.deepcopy(key.default))
        settings = load_settings(app.config, given=given)
        if settings.require_auth and "flask-jwt-extended" not in app.extensions and self.hooks.identity_loader is None:
            raise ConfigError(
                "LLM_PROXY_REQUIRE_AUTH",
                "is on but the app has no JWTManager: call JWTManager(app) before LLMProxy(app), register an "
                "@proxy.identity_loader before init_app, or set LLM_PROXY_REQUIRE_AUTH = False for an open "
                "(development) proxy",
            )
        if settings.admin and "flask-jwt-extended" not in app.extensions:
            log.warning(
                "LLM_PROXY_ADMIN is on but the app has no JWTManager: only an @proxy.admin_required callback can open the operator page"
            )
        if not settings.providers:
            log.warning("LLM_PROXY_PROVIDERS is empty: the proxy serves no provider endpoints")
        limiter = limiter or self._limiter
        if limiter is None and (settings.rate_limit or settings.token_quota):
            limiter = _make_limiter(app)
        state = ProxyState(app, settings, limiter, self.hooks)
        bp = make_blueprint(settings)
        apply_cors(bp, settings)
        app.register_blueprint(bp)
        app.extensions["llm_proxy"] = state
        log.debug("flask-llm-proxy ready at %s with providers %s", settings.url_prefix, json.dumps(sorted(settings.providers)))

    @staticmethod
    def state(app: Flask) -> ProxyState:
        return app.extensions["llm_proxy"]


def _make_limiter(app: Flask) -> Limiter:
    """Our own Limiter, configured from flask-limiter's keys in the host's config
    (``RATELIMIT_STORAGE_URI``, ...): the proxy counts with its storage and strategy
    (:mod:`limits`), never through its request hooks. Fails fast when Redis is down instead of
    hanging.

    It is initialised on a Flask app of its own, which serves no request, with a copy of the host's
    ``RATELIMIT_*`` keys. Initialised on the host's app, flask-limiter would run a check before,
    a header step after and a teardown around every request of that app, with nothing to do for
    any of them (about 80 us per request in a gevent worker: ``benchmarks/default_parts.py``), and
    would apply a host's ``RATELIMIT_DEFAULT`` or ``RATELIMIT_APPLICATION`` to every route keyed by
    one constant (one bucket shared by every user).
    """
    from flask_limiter import Limiter

    holder = Flask(__name__.split(".")[0])
    holder.config.update({k: v for k, v in app.config.items() if k.startswith("RATELIMIT_")})
    holder.config["RATELIMIT_HEADERS_ENABLED"] = False  # the proxy writes its own X-RateLimit-* headers
    uri = str(holder.config.get("RATELIMIT_STORAGE_URI") or "")
    options: dict[str, Any] = {}
    if uri.startswith(("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")):
        options = {"socket_connect_timeout": 2, "socket_timeout": 2}
    return Limiter(key_func=lambda: "llm-proxy", app=holder, storage_options=options, default_limits=[])


__all__ = ["LLMProxy"]
