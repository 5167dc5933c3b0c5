"""One exception hierarchy for everything a client can be told, and its two renderings.

Before the stream starts an error is an HTTP status with a JSON body ``{"error", "type"}``
(plus ``code``, the same type in the upper-case form agentary-js uses). After the stream
started it is one ``error:`` line (CONTRACT.md), since the status is already 200.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from . import _json


class ProxyError(HTTPException):
    """Base class: an HTTP status, a machine-readable ``type`` and a human message.

    A Werkzeug ``HTTPException`` (``code`` is the status), as Flask-Limiter's errors are, so a host's
    ``@app.errorhandler(ProxyError)`` (or a subclass) can render them its own way, and one raised
    outside the proxy's views still answers with the proxy's JSON (:meth:`get_response`).
    """

    status: int = 500
    type: str = "proxy_error"
    #: whether the proxy already retried this failure: clients must not retry it again
    retried: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        retried: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description=message)
        self.message = message
        if status is not None:
            self.status = status
        self.code = self.status  # werkzeug's name for the status
        if type is not None:
            self.type = type
        self.headers = dict(headers or {})
        self.retried = retried
        self.extra = extra or {}

    @property
    def error_code(self) -> str:
        """The type in the upper-case form agentary-js's errors carry (``code``)."""
        return self.type.upper()

    def __str__(self) -> str:
        return self.message

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        """The contract's JSON error (werkzeug would render HTML)."""
        resp = Response(self.to_json(), status=self.status, mimetype="application/json")
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "type": self.type, "code": self.error_code}
        body.update(self.extra)
        return body

    def to_json(self) -> bytes:
        return _json.dumps(self.to_dict())

    def to_sse_line(self) -> bytes:
        """The in-stream rendering: ``error: {...}`` then a blank line, and nothing after."""
        payload = {"message": self.message, "statusCode": self.status, "code": self.error_code}
        return b"error: " + _json.dumps(payload) + b"\n\n"

    def to_native_json(self, api: str) -> bytes:
        """The error in a provider's own shape (``api``: ``messages``, ``chat`` or ``responses``),
        so the official SDKs raise their usual exception classes."""
        if api == "messages":
            etype = _ANTHROPIC_ERROR_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
            return _json.dumps({"type": "error", "error": {"type": etype, "message": self.message}})
        return _json.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.extra.get("param"), "code": self.error_code.lower()}}
        )

    def to_native_event(self, api: str) -> bytes:
        """An error inside an already started native stream, in the provider's own event form."""
        if api == "messages":
            return b"event: error\ndata: " + self.to_native_json(api) + b"\n\n"
        if api == "responses":
            body = {"type": "error", "code": self.error_code.lower(), "message": self.message, "param": None}
            return b"event: error\ndata: " + _json.dumps(body) + b"\n\n"
        return b"data: " + self.to_native_json(api) + b"\n\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.type!r}, {self.message!r})"


#: the Anthropic error type of each status (https://docs.anthropic.com/en/api/errors)
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request"


class ModelNotAllowed(ProxyError):
    status = 400
    type = "model_not_allowed"


class ProviderNotFound(ProxyError):
    status = 404
    type = "not_found"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "payload_too_large"


class UnsupportedMediaType(ProxyError):
    status = 415
    type = "unsupported_media_type"


class AuthenticationError(ProxyError):
    status = 401
    type = "authentication_error"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_denied"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limited"


class QuotaExceeded(ProxyError):
    status = 429
    type = "quota_exceeded"


class BudgetExceeded(ProxyError):
    status = 429
    type = "budget_exceeded"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "service_unavailable"


class Overloaded(ServiceUnavailable):
    """This worker serves as many requests as it may (``LLM_PROXY_MAX_STREAMS_PER_WORKER``)."""

    type = "overloaded"


class UpstreamError(ProxyError):
    """The upstream answered with an error (HTTP status or an error event in the stream)."""

    status = 502
    type = "upstream_error"


class NetworkError(UpstreamError):
    """The upstream could not be reached or dropped the connection."""

    status = 502
    type = "network_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"


class ProxyMisconfigured(UpstreamError):
    """A deployment mistake (e.g. gevent patched too late); the log line names the fix."""

    status = 502
    type = "proxy_misconfigured"


class ConfigError(ValueError):
    """A wrong ``LLM_PROXY_*`` setting, raised by ``init_app`` and naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Every configured secret out of a message that may echo the request (an upstream error body
    can quote the headers it got). ``secrets`` longest first, so that a value that contains
    another is replaced whole (config.provider_secrets)."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def scrub_bytes(data: bytes, secrets: Sequence[bytes]) -> bytes:
    """:func:`scrub` for bytes relayed as the upstream sent them (the native passthrough's events),
    with the secrets encoded once per request."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, b"[redacted]")
    return data
