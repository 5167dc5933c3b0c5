"""The blueprint: validate -> authorize -> call the upstream -> stream.

Everything that can be refused is refused before the upstream is called, with a JSON error
naming the problem. Once the upstream answered 200 the response is a :class:`StreamBody` over
:func:`relay`, and the request's accounting runs when that body closes.
"""
from __future__ import annotations

import io
import logging
import random
import re
import time
from typing import Any, Callable

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import _json, signals
from .auth import JWT_ERRORS, check_model_claim, describe_jwt_error, identify
from .chat import ChatRequest, parse_chat_request
from .errors import InvalidRequest, ModelNotAllowed, PayloadTooLarge, ProviderNotFound, ProxyError, UnsupportedMediaType, UpstreamError, scrub
from .exchange import Exchange
from .native import APIS, native_error_body, native_view
from .providers import adapter_for
from .providers.base import output_cap
from .providers.mock import MockSource
from .relay import StreamBody, collect, iter_items, peek, relay, upstream_items

log = logging.getLogger("flask_llm_proxy")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}
HTTP_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
              429: "rate_limited", 500: "internal_error"}
#: what a request keeps on ``g``, dropped when it ends (:func:`_end`)
REQUEST_STATE = ("llm_proxy_started", "llm_proxy_native", "llm_proxy_request_id", "llm_proxy_rate_headers", "llm_proxy_exchange",
                 "llm_proxy_refusal_counted", "_llm_proxy_identity")


def state() -> Any:
    return current_app.extensions["llm_proxy"]


# --- request plumbing ------------------------------------------------------------------------


def _begin() -> None:
    # the request and g resolved once each: every access through Flask's proxies is a lookup
    req, gg = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    gg.llm_proxy_started = time.perf_counter()
    endpoint = req.endpoint or ""
    if ".native_" in endpoint:  # llm_proxy.native_<api>__<provider>: errors in the provider's shape
        gg.llm_proxy_native = endpoint.split(".native_", 1)[1].split("__", 1)[0]
    rid = req.environ.get("HTTP_X_REQUEST_ID", "")
    # 128 random bits from the PRNG: unique enough for a request id, and no syscall as uuid4 makes
    gg.llm_proxy_request_id = rid if rid and REQUEST_ID_RE.match(rid) else f"{random.getrandbits(128):032x}"


def _finish(response: Response) -> Response:
    gg = g._get_current_object()  # type: ignore[attr-defined]
    headers = response.headers
    headers["X-Request-ID"] = gg.get("llm_proxy_request_id", "")
    rate = gg.get("llm_proxy_rate_headers")
    if rate:
        for k, v in rate.items():
            headers.setdefault(k, v)
    return response


def _end(exc: BaseException | None) -> None:
    """``g`` lives as long as the app context, which a host (or its tests) may keep around several
    requests: nothing of this one (its identity, its error shape) may reach the next."""
    gg = g._get_current_object()  # type: ignore[attr-defined]
    for name in REQUEST_STATE:
        gg.pop(name, None)


def error_response(err: ProxyError) -> Response:
    """The JSON error of every failed request (the neutral or the provider's shape)."""
    if g.get("llm_proxy_exchange") is None and not g.get("llm_proxy_refusal_counted"):
        g.llm_proxy_refusal_counted = True  # once, even if answering it failed and a 500 follows
        _count_refusal(err)  # an exchange's errors are counted when it is accounted for
    api = g.get("llm_proxy_native")
    body = err.to_json() if api is None else native_error_body(api, err)
    resp = Response(body, status=err.status, mimetype="application/json")
    for k, v in err.headers.items():
        resp.headers[k] = v
    if err.retried:
        resp.headers["x-should-retry"] = "false"
    return resp


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


def read_json(limit: int) -> Any:
    """Parse the body; refuse a too-large one from its length header or while reading it."""
    if not is_json_content_type(request.environ.get("CONTENT_TYPE", "")):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    raw = _read_body(limit)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = _json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    # Nesting needs an opening bracket per level: a body with few brackets needs no walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body, MAX_DEPTH):
        raise InvalidRequest(f"the request body is nested deeper than {MAX_DEPTH} levels")
    return body


def _read_body(limit: int) -> bytes:
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH", "")
    plain = (
        declared.isascii() and declared.isdigit() and len(declared) <= 18  # not "²", not 5000 digits
        and "HTTP_TRANSFER_ENCODING" not in environ  # chunked wins over a Content-Length (RFC 9112 6.3)
    )
    length = int(declared) if plain else None
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the request body is {length} bytes; at most {limit} are accepted")
    if length is not None and "stream" not in request.__dict__:
        # Nothing has touched the body yet (werkzeug caches its stream on the request): read the
        # declared length straight from the server, a third of the cost of werkzeug's wrappers,
        # and leave the bytes in their place for anyone who reads the body after us.
        stream = environ["wsgi.input"]
        parts, left = [], length
        while left > 0:  # a server may hand a body over in pieces
            part = stream.read(left)
            if not part:
                break  # the client sent less than it declared: the JSON parse reports it
            parts.append(part)
            left -= len(part)
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        environ["wsgi.input"] = io.BytesIO(raw)
        return raw
    # A chunked body, one with an odd length header, or one the host app already read: werkzeug
    # stops reading a chunked body at the limit without an error, so ask for one byte more.
    request.max_content_length = limit + 1
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        return b"x" * (limit + 1)


MAX_DEPTH = 64


def is_json_content_type(ct: str) -> bool:
    """``application/json`` (any parameters) or a ``+json`` type. A browser sends a cross-origin
    POST without asking first (no CORS preflight) only as text/plain, a form, or with no type: such
    a request is refused before it costs anything, so another site cannot spend the proxy's
    budget through its visitors' browsers, even with auth off."""
    if ct.startswith("application/json") and (len(ct) == 16 or ct[16] in "; "):
        return True
    mime = ct.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def too_deep(obj: Any, limit: int) -> bool:
    """Iterative, so a hostile body cannot exhaust the stack; JSON that deep is never needed."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


# --- views -----------------------------------------------------------------------------------


def chat(provider_name: str) -> Response:
    st = state()
    s = st.settings
    provider = s.providers[provider_name]
    identity, claims = identify(s)
    gg = g._get_current_object()  # type: ignore[attr-defined]
    gg.llm_proxy_rate_headers, quota_spent = st.limits.hit_rate(identity) if st.limits else ({}, None)
    body = read_json(provider.max_body_bytes or s.max_body_bytes)
    cap = output_cap(provider, s) or 2**31 - 1
    req = parse_chat_request(
        body, max_messages=provider.max_messages or s.max_messages, max_tokens_cap=cap, allow_responses=provider.type == "openai"
    )
    if not provider.allows(req.model):
        raise ModelNotAllowed(f"model {req.model!r} is not allowed on '{provider_name}'; GET {s.url_prefix}/models lists the allowed ones")
    check_model_claim(s, claims, req.model)
    if provider.type == "mock":
        adapter = upstream_body = None
    else:
        adapter = adapter_for(provider, req)
        upstream_body = adapter.build(req, provider, s)
    st.check_allowance(identity, quota_spent)
    ex = Exchange(
        gg.llm_proxy_request_id, identity, provider_name, req.model, gg.llm_proxy_started,
        input_chars=req.input_size_hint(), keep_text=s.log_content,
    )
    st.attach(ex, req)
    gg.llm_proxy_exchange = ex  # its errors are accounted for by the exchange, not counted as refusals
    return accounted(ex, run, st, ex, req, provider, adapter, upstream_body)


def accounted(ex: Exchange, call: Callable[..., Response], *args: Any) -> Response:
    """``call(*args)`` for an exchange the extension is accounting for. An error that escapes it
    (before the response streams) is the answer's status: recorded here, once; a bug or a setting
    no check foresaw as the 500 the client gets."""
    try:
        return call(*args)
    except ProxyError as err:
        ex.fail(err, before_stream=True)
        ex.finalize()
        raise
    except Exception:
        ex.fail(ProxyError("internal error in the proxy", status=500, type="internal_error"), before_stream=True)
        ex.finalize()
        raise


def run(st: Any, ex: Exchange, req: ChatRequest, provider: Any, adapter: Any, upstream_body: Any) -> Response:
    """Call the upstream (or the mock) and answer as a stream or as one JSON document."""
    try:
        items, translator, first = _first_tokens(st, ex, provider, req, adapter, upstream_body)
    except ProxyError as err:
        err.retried = err.retried or ex.retries > 0  # -> x-should-retry: false, whichever kind retried
        raise
    if not req.stream:
        payload = collect(ex, items, translator, first)  # an error propagates to accounted()
        ex.finalize()
        return Response(_json.dumps(payload), status=200, mimetype="application/json")
    return Response(
        StreamBody(relay(ex, items, translator, first), ex.finalize),
        status=200,
        content_type=SSE_CONTENT_TYPE,  # given whole, werkzeug has no mimetype to complete
        headers=STREAM_HEADERS,
        direct_passthrough=True,
    )


def _first_tokens(st: Any, ex: Exchange, provider: Any, req: ChatRequest, adapter: Any, upstream_body: Any) -> tuple[Any, Any, tuple[Any, ...]]:
    """Open the stream and take its first batch (:func:`peek`): an error before the first token is
    still an HTTP status. Upstreams answer 200 and then fail in their first event (Anthropic's
    ``overloaded_error``): nothing reached the client yet, so that is retried like a 5xx or a 429
    status, within the same ``LLM_PROXY_MAX_RETRIES`` and backoff."""
    s = st.settings
    if adapter is None:
        source = MockSource(provider, req)
        ex.translator = source.translator
        items = iter_items(source)
        return items, source.translator, peek(items)
    body = _json.dumps(upstream_body)
    while True:
        ex.translator = None  # no tokens to count for an attempt the upstream refused
        resp = open_upstream(st, ex, provider, adapter, body, max_retries=s.max_retries - ex.retries)  # one budget for both kinds
        translator = ex.translator = adapter.translator()
        items = upstream_items(ex, resp, translator, s.keepalive)
        try:
            return items, translator, peek(items)
        except UpstreamError as err:
            if getattr(err, "from_stream", False):
                ex.translator = None  # answered as an error status: no tokens, as for one the upstream sent
                err.message = scrub(err.message, ex.secrets)  # before the retry's log line
            if not getattr(err, "transient", False) or ex.retries >= s.max_retries:
                raise
            delay = s.retry_backoff * 2**ex.retries
            log.info("request %s: upstream attempt %d failed in its first event (%s); retrying in %.2fs", ex.request_id, ex.retries + 1, err.message, delay)
            _count_retry(ex, err)
            time.sleep(delay)


def _count_retry(ex: Exchange, err: ProxyError) -> None:
    ex.retries += 1
    signals.upstream_retry.send(current_app._get_current_object(), request_id=ex.request_id, error=err)  # type: ignore[attr-defined]


def open_upstream(st: Any, ex: Exchange, provider: Any, adapter: Any, body: bytes, accept: str = "text/event-stream",
                  max_retries: int | None = None) -> Any:
    """Send ``body`` to the provider's API (retrying before the first byte) and return the open
    2xx answer; URL and headers come from configuration, nothing a client sends steers them."""
    s = st.settings
    client = st.upstream
    target = client.target(provider, adapter.path, adapter.auth_headers(provider), accept)

    def on_retry(err: ProxyError) -> None:
        _count_retry(ex, err)

    ex.secrets = provider.secrets
    return client.open(
        target,
        body,
        secrets=ex.secrets,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        max_retries=s.max_retries if max_retries is None else max_retries,
        backoff=s.retry_backoff,
        retry_after_max=s.retry_after_max,
        on_retry=on_retry,
        request_id=ex.request_id,
    )


def not_found(rest: str) -> Response:
    """Anything else under the prefix: a JSON 404 (or 405 for a known path), not Flask's HTML."""
    try:
        endpoint, _ = current_app.url_map.bind("").match(request.path, method="POST")
    except HTTPException:
        endpoint = None
    if endpoint in (None, request.endpoint):
        raise ProviderNotFound(f"no such endpoint: {request.path}; GET {state().settings.url_prefix}/models lists the providers")
    raise ProxyError(f"{request.method} is not allowed here; use POST", status=405, type="method_not_allowed", headers={"Allow": "POST, OPTIONS"})


def health() -> Response:
    st = state()
    if not st.settings.public_health:
        identify(st.settings)
    body = {"status": "ok", "providers": sorted(st.settings.providers)}
    return Response(_json.dumps(body), mimetype="application/json")


def models() -> Response:
    st = state()
    identify(st.settings)
    body = {
        "providers": {
            name: {"type": p.type, "models": list(p.models), "endpoint": f"{st.settings.url_prefix}/{name}"}
            for name, p in st.settings.providers.items()
        }
    }
    return Response(_json.dumps(body), mimetype="application/json")


def metrics_view() -> Response:
    """Prometheus text; restricted to LLM_PROXY_METRICS_ALLOW when set (scrapers carry no JWT)."""
    from .auth import client_address
    from .metrics import address_allowed, render

    s = state().settings
    if not address_allowed(client_address(s.trusted_proxies), s.metrics_allow):
        raise ProxyError("metrics are not available to this address", status=403, type="permission_denied")
    if state().accounting.metrics is None:
        raise ProxyError("metrics are unavailable: prometheus_client is not installed", status=503, type="service_unavailable")
    body, content_type = render()
    return Response(body, mimetype=None, content_type=content_type)


def make_blueprint(settings: Any) -> Blueprint:
    bp = Blueprint(
        "llm_proxy", __name__, url_prefix=settings.url_prefix or None, static_folder="static", static_url_path="/static"
    )
    for name in settings.providers:
        bp.add_url_rule(f"/{name}", endpoint="chat_" + name.replace(".", "_"), view_func=chat, methods=["POST"], defaults={"provider_name": name})
    for name, p in settings.providers.items():
        apis = {"anthropic": ("messages",), "openai": ("chat", "responses")}.get(p.type, ())
        for api in apis:
            path = APIS[api][0].path if api == "messages" else "/v1" + APIS[api][0].path
            bp.add_url_rule(
                f"/{name}{path}", endpoint=f"native_{api}__{name.replace('.', '_')}", view_func=native_view,
                methods=["POST"], defaults={"provider_name": name, "api": api},
            )
    bp.add_url_rule("/health", view_func=health, methods=["GET"])
    bp.add_url_rule("/<path:rest>", view_func=not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    bp.add_url_rule("/models", view_func=models, methods=["GET"])
    if settings.metrics:
        bp.add_url_rule("/metrics", view_func=metrics_view, methods=["GET"])
    bp.before_request(_begin)
    bp.after_request(_finish)
    bp.teardown_request(_end)
    bp.register_error_handler(ProxyError, _on_proxy_error)
    for exc in JWT_ERRORS:
        bp.register_error_handler(exc, _on_jwt_error)
    bp.register_error_handler(HTTPException, _on_http_error)
    bp.register_error_handler(Exception, _on_unexpected)
    return bp
