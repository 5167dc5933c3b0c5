"""``LLMProxy``: the Flask extension object, and the per-app state it wires together.

``LLMProxy(app)`` or ``LLMProxy().init_app(app)``; one extension object may serve several apps,
each with its own settings, blueprint, limiter, ledger and metrics in
``app.extensions["llm_proxy"]`` (a :class:`ProxyState`).
"""
from __future__ import annotations

import copy
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from flask import Flask

from . import signals
from .config import DEFAULTS, Settings, is_ipv6_origin, load_settings
from .errors import ConfigError
from .exchange import Exchange, UsageRecord
from .limits import Limits
from .upstream import UpstreamClient
from .views import make_blueprint

if TYPE_CHECKING:
    from flask_limiter import Limiter

    from .chat import ChatRequest

log = logging.getLogger("flask_llm_proxy")
EXPOSED_HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Request-ID", "x-should-retry"]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Request-ID", "x-api-key", "anthropic-version"]


class ProxyState:
    """Everything one app's proxy needs at request time, built once in ``init_app``."""

    def __init__(self, extension: LLMProxy, app: Flask, settings: Settings, limiter: Limiter | None) -> None:
        self.extension = extension
        self.app = app  # the sender of signals sent after the request context is gone
        self.settings = settings
        self.upstream = UpstreamClient(settings.pool_maxsize)
        self.limiter = limiter
        self.limits = (
            Limits(limiter, settings.rate_limit, settings.token_quota, settings.fail_open)
            if limiter is not None and (settings.rate_limit or settings.token_quota)
            else None
        )
        from .usage import Accounting

        self.accounting = Accounting(app, settings)

    def check_allowance(self, identity: str, quota_spent: list[int] | None = None) -> None:
        """Quotas and budgets, before the upstream call: an exhausted user costs nothing.
        ``quota_spent``: the quota readings :meth:`Limits.hit_rate` returned, if any."""
        if self.limits is not None:
            self.limits.check_quota(identity, quota_spent)
        self.accounting.check_budget(identity)

    def attach(self, ex: Exchange, req: ChatRequest) -> None:
        """Account for ``ex`` exactly once, whenever and however it ends."""

        def account(record: UsageRecord) -> UsageRecord:
            if self.limits is not None:
                self.limits.charge_quota(record.identity, record.total_tokens)
            record = self.accounting.record(record)
            content = None
            if self.settings.log_content:
                content = {"prompt": req.text_for_log(), "completion": "".join(ex.text_parts or ())}
            self.accounting.log_line(record, content)
            return record

        ex.on_finalize(account)
        self.accounting.started(ex)


class LLMProxy:
    """The extension. ``limiter=`` a host's own flask-limiter ``Limiter`` to count with."""

    def __init__(self, app: Flask | None = None, *, limiter: Limiter | None = None) -> None:
        self._limiter = limiter
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, limiter: Limiter | None = None) -> None:
        for key, default in DEFAULTS.items():
            app.config.setdefault(key, copy.deepcopy(default))
        settings = load_settings(app.config)
        if settings.require_auth and "flask-jwt-extended" not in app.extensions:
            raise ConfigError(
                "LLM_PROXY_REQUIRE_AUTH",
                "is on but the app has no JWTManager: call JWTManager(app) before LLMProxy(app), "
                "or set LLM_PROXY_REQUIRE_AUTH = False for an open (development) proxy",
            )
        if not settings.providers:
            log.warning("LLM_PROXY_PROVIDERS is empty: the proxy serves no provider endpoints")
        limiter = limiter or self._limiter
        if limiter is None and (settings.rate_limit or settings.token_quota):
            limiter = _make_limiter(app)
        state = ProxyState(self, app, settings, limiter)
        bp = make_blueprint(settings)
        if settings.cors_origins:
            from flask_cors import CORS

            # Explicit origins: CORS(blueprint) would otherwise default to "*" (FIELD-NOTES).
            CORS(
                bp,
                origins=cors_origin_matchers(settings.cors_origins),
                supports_credentials=settings.cors_credentials,
                expose_headers=EXPOSED_HEADERS,
                allow_headers=ALLOWED_HEADERS,
                methods=["GET", "POST", "OPTIONS"],
                max_age=settings.cors_max_age,
                vary_header=True,
            )
        app.register_blueprint(bp)
        app.extensions["llm_proxy"] = state
        log.debug("flask-llm-proxy ready at %s with providers %s", settings.url_prefix, json.dumps(sorted(settings.providers)))

    @staticmethod
    def state(app: Flask) -> ProxyState:
        return app.extensions["llm_proxy"]


def cors_origin_matchers(origins: tuple[str, ...]) -> list[Any]:
    """Exact origins stay strings; regular expressions are anchored at both ends.

    flask-cors matches a pattern with ``re.match`` (start only): ``https://.*\\.example\\.org``
    would also allow ``https://chat.example.org.attacker.net``.
    """
    out: list[Any] = []
    for origin in origins:
        if origin == "*" or _EXACT_ORIGIN.match(origin):
            out.append(origin)
        elif is_ipv6_origin(origin):  # flask-cors would read its brackets as a pattern
            out.append(re.compile(re.escape(origin) + r"\Z", re.IGNORECASE))
        else:
            out.append(re.compile(rf"(?:{origin})\Z", re.IGNORECASE))
    return out


_EXACT_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d+)?$")


def _make_limiter(app: Flask) -> Limiter:
    """Our own Limiter, configured from flask-limiter's keys (RATELIMIT_STORAGE_URI, ...): the
    proxy counts with its storage and strategy (:mod:`limits`), never through its request hook.

    It adds no limit of its own to the app: flask-limiter would apply a host's RATELIMIT_DEFAULT or
    RATELIMIT_APPLICATION to every route through it, keyed by one constant (one bucket shared by
    every user), so every request is exempt from its checks. Fail fast when Redis is down instead
    of hanging.
    """
    from flask_limiter import Limiter

    uri = str(app.config.get("RATELIMIT_STORAGE_URI") or "")
    options: dict[str, Any] = {}
    if uri.startswith(("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")):
        options = {"socket_connect_timeout": 2, "socket_timeout": 2}
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", False)
    limiter = Limiter(key_func=lambda: "llm-proxy", app=app, storage_options=options, default_limits=[])
    limiter.request_filter(lambda: True)
    return limiter


__all__ = ["LLMProxy", "ProxyState", "signals"]
