"""The blueprint: its routes, the request plumbing every view shares (request id, rate-limit
headers, per-request state on ``g``), and one error handler that answers every failure in the
contract's JSON shape or, on the native endpoints, in the provider's own.

The views live beside it: :mod:`.chat` (the contract endpoint), :mod:`.native` (the SDKs' endpoints).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import _json
from ..access.auth import JWT_ERRORS, client_address, describe_jwt_error, identify
from ..access.profiles import check_profile_claim
from ..accounting.metrics import address_allowed, render
from ..config import Settings
from ..errors import PayloadTooLarge, ProviderNotFound, ProxyError
from .admin import register_admin
from .chat import chat
from .flow import state
from .native import APIS, native_view

log = logging.getLogger("flask_llm_proxy")

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
HTTP_TYPES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
}
#: what a request keeps on ``g``, dropped when it ends (:func:`_end`)
REQUEST_STATE = (
    "llm_proxy_started",
    "llm_proxy_native",
    "llm_proxy_request_id",
    "llm_proxy_rate_headers",
    "llm_proxy_exchange",
    "llm_proxy_refusal_counted",
    "_llm_proxy_identity",
    "llm_proxy_cache",
)


# --- request plumbing ------------------------------------------------------------------------


def _begin() -> None:
    g.llm_proxy_started = time.perf_counter()
    endpoint = request.endpoint or ""
    if ".native_" in endpoint:  # llm_proxy.native_<api>__<provider>: errors in the provider's shape
        g.llm_proxy_native = endpoint.split(".native_", 1)[1].split("__", 1)[0]
    rid = request.environ.get("HTTP_X_REQUEST_ID", "")
    # 128 random bits from the PRNG: unique enough for a request id, and no syscall as uuid4 makes
    g.llm_proxy_request_id = rid if rid and REQUEST_ID_RE.match(rid) else f"{random.getrandbits(128):032x}"


def _finish(response: Response) -> Response:
    headers = response.headers
    headers["X-Request-ID"] = g.get("llm_proxy_request_id", "")
    cache = g.get("llm_proxy_cache")
    if cache:
        headers["X-LLM-Proxy-Cache"] = cache
    rate = g.get("llm_proxy_rate_headers")
    if rate and "X-RateLimit-Limit" not in headers:  # a refusal's own (all three) stand
        headers.extend(rate)
    ex = g.get("llm_proxy_exchange")
    if ex is not None and response.status_code < 400:  # who answered: a deployment's label, a fallback
        if ex.call.deployment is not None:
            headers["X-LLM-Proxy-Deployment"] = ex.call.deployment
        if ex.request.fallback_from is not None:
            headers["X-LLM-Proxy-Fallback"] = f"{ex.request.provider}:{ex.request.model}"
    return response


def _end(exc: BaseException | None) -> None:
    """``g`` lives as long as the app context, which a host (or its tests) may keep around several
    requests: nothing of this one (its identity, its error shape) may reach the next."""
    for name in REQUEST_STATE:
        g.pop(name, None)


def error_response(err: ProxyError) -> Response:
    """The JSON error of every failed request (the neutral or the provider's shape)."""
    if g.get("llm_proxy_exchange") is None and not g.get("llm_proxy_refusal_counted"):
        g.llm_proxy_refusal_counted = True  # once, even if answering it failed and a 500 follows
        _count_refusal(err)  # an exchange's errors are counted when it is accounted for
    host = _host_handler(err)
    if host is not None:  # the host renders the proxy's errors its own way
        return current_app.make_response(host(err))
    api = g.get("llm_proxy_native")
    body = err.to_json() if api is None else err.to_native_json(api)
    resp = Response(body, status=err.status, mimetype="application/json")
    for k, v in err.headers.items():
        resp.headers[k] = v
    if err.retried:
        resp.headers["x-should-retry"] = "false"
    return resp


def _host_handler(err: ProxyError) -> Any:
    """A host's ``@app.errorhandler(ProxyError)`` (or one of its subclasses). Flask tries a
    blueprint's handlers before the app's, so the proxy's own would always win: this lets the
    host's win for the proxy's errors. Handlers for ``Exception``, ``HTTPException`` or a status
    code are left out: a host's HTML 429 page is not what a browser's ``fetch`` expects."""
    handlers = current_app.error_handler_spec.get(None, {}).get(None, {})
    if not handlers:
        return None
    for cls in type(err).__mro__:
        if cls in handlers:
            return handlers[cls]
        if cls is ProxyError:
            return None
    return None


def _count_refusal(err: ProxyError) -> None:
    st = current_app.extensions.get("llm_proxy")
    metrics = st.accounting.metrics if st is not None else None
    if metrics is not None:
        provider = (request.view_args or {}).get("provider_name", "")  # a configured name, or "" off the provider routes
        metrics.refused.labels(provider, err.type).inc()


def _on_proxy_error(err: ProxyError) -> Response:
    return error_response(err)


def _on_http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    if code == 429:  # a host limit from flask-limiter: keep its headers
        resp = error_response(ProxyError(f"rate limit exceeded: {exc.description}", status=429, type="rate_limited"))
        inner = exc.get_response()
        for k in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            if k in inner.headers:
                resp.headers[k] = inner.headers[k]
        return resp
    if isinstance(exc, RequestEntityTooLarge):
        return error_response(PayloadTooLarge("the request body is larger than this endpoint accepts"))
    resp = error_response(ProxyError(exc.description or exc.name, status=code, type=HTTP_TYPES.get(code, "http_error")))
    if code == 405 and exc.get_response().headers.get("Allow"):
        resp.headers["Allow"] = exc.get_response().headers["Allow"]
    return resp


def _on_jwt_error(exc: Exception) -> Response:
    return error_response(describe_jwt_error(exc))


def _on_unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _on_http_error(exc)
    log.exception("request %s: unexpected error in %s", g.get("llm_proxy_request_id", "-"), request.path)
    return error_response(ProxyError("internal error in the proxy", status=500, type="internal_error"))


def not_found(rest: str) -> Response:
    """Anything else under the prefix: a JSON 404 (or 405 for a known path), not Flask's HTML."""
    try:
        endpoint, _ = current_app.url_map.bind("").match(request.path, method="POST")
    except HTTPException:
        endpoint = None
    if endpoint in (None, request.endpoint):
        raise ProviderNotFound(f"no such endpoint: {request.path}; GET {state().settings.url_prefix}/models lists the providers")
    raise ProxyError(
        f"{request.method} is not allowed here; use POST", status=405, type="method_not_allowed", headers={"Allow": "POST, OPTIONS"}
    )


def health() -> Response:
    st = state()
    if not st.settings.public_health:
        identify(st.settings, loader=st.hooks.identity_loader)
    body = {"status": "ok", "providers": sorted(st.settings.providers)}
    return Response(_json.dumps(body), mimetype="application/json")


def models() -> Response:
    """What this user may call: the providers (unless only profiles are served) and the profiles
    their token allows."""
    st = state()
    s = st.settings
    _, claims = identify(s, loader=st.hooks.identity_loader)
    body: dict[str, Any] = {
        "providers": {}
        if s.require_profile
        else {name: {"type": p.type, "models": list(p.models), "endpoint": f"{s.url_prefix}/{name}"} for name, p in s.providers.items()}
    }
    profiles = {}
    for name, prof in s.profiles.items():
        try:
            check_profile_claim(s, claims, name)
        except ProxyError:
            continue
        profiles[name] = {"provider": prof.provider, "models": list(prof.models), "endpoint": f"{s.url_prefix}/profiles/{name}"}
    body["profiles"] = profiles
    return Response(_json.dumps(body), mimetype="application/json")


def metrics_view() -> Response:
    """Prometheus text; restricted to LLM_PROXY_METRICS_ALLOW when set (scrapers carry no JWT)."""
    s = state().settings
    if not address_allowed(client_address(s.trusted_proxies), s.metrics_allow):
        raise ProxyError("metrics are not available to this address", status=403, type="permission_denied")
    if state().accounting.metrics is None:
        raise ProxyError("metrics are unavailable: prometheus_client is not installed", status=503, type="service_unavailable")
    body, content_type = render()
    return Response(body, mimetype=None, content_type=content_type)


def _native_paths(provider_type: str) -> list[tuple[str, str]]:
    """(api, path) of the SDK endpoints of a provider type: where the official SDKs send requests."""
    apis = {"anthropic": ("messages",), "openai": ("chat", "responses")}.get(provider_type, ())
    return [(api, APIS[api][0].path if api == "messages" else "/v1" + APIS[api][0].path) for api in apis]


def make_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("llm_proxy", __name__, url_prefix=settings.url_prefix or None, static_folder=STATIC, static_url_path="/static")
    for name in settings.providers:
        bp.add_url_rule(
            f"/{name}", endpoint="chat_" + name.replace(".", "_"), view_func=chat, methods=["POST"], defaults={"provider_name": name}
        )
    for name, p in settings.providers.items():
        for api, path in _native_paths(p.type):
            bp.add_url_rule(
                f"/{name}{path}",
                endpoint=f"native_{api}__{name.replace('.', '_')}",
                view_func=native_view,
                methods=["POST"],
                defaults={"provider_name": name, "api": api},
            )
    for pname, prof in settings.profiles.items():
        route, ep = f"/profiles/{pname}", pname.replace(".", "_")
        bp.add_url_rule(
            route,
            endpoint=f"profile_{ep}",
            view_func=chat,
            methods=["POST"],
            defaults={"provider_name": prof.provider, "profile_name": pname},
        )
        for api, path in _native_paths(settings.providers[prof.provider].type):
            bp.add_url_rule(
                f"{route}{path}",
                endpoint=f"native_{api}__profile__{ep}",
                view_func=native_view,
                methods=["POST"],
                defaults={"provider_name": prof.provider, "api": api, "profile_name": pname},
            )
    bp.add_url_rule("/health", view_func=health, methods=["GET"])
    bp.add_url_rule("/<path:rest>", view_func=not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    bp.add_url_rule("/models", view_func=models, methods=["GET"])
    if settings.metrics:
        bp.add_url_rule("/metrics", view_func=metrics_view, methods=["GET"])
    if settings.admin:
        register_admin(bp, settings)
    bp.before_request(_begin)
    bp.after_request(_finish)
    bp.teardown_request(_end)
    bp.register_error_handler(ProxyError, _on_proxy_error)
    for exc in JWT_ERRORS:
        bp.register_error_handler(exc, _on_jwt_error)
    bp.register_error_handler(HTTPException, _on_http_error)
    bp.register_error_handler(Exception, _on_unexpected)
    return bp
