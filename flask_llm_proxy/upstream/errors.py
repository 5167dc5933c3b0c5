"""What an upstream's failures mean for the client: HTTP errors, answers that are not HTTP, TLS
failures, ``Retry-After``. Every message is scrubbed of the provider's secrets before it is kept
(an upstream's error body may quote the request's headers)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Sequence
from datetime import timezone
from email.utils import parsedate_to_datetime

import requests

from .. import _json
from ..errors import NetworkError, UpstreamError, UpstreamTimeout, scrub

MAX_ERROR_BODY = 65536
MAX_ERROR_MESSAGE = 500  # characters of an upstream's error message passed on to the client
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
#: OpenSSL's words for a peer that does not speak TLS (a plain HTTP port behind an https:// URL)
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure", "UNEXPECTED_RECORD", "packet length too long")


def find_cause(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
    """The first ``kind`` among ``exc`` and the exceptions it wraps: requests and urllib3 pass the
    cause on in ``args`` (``ConnectionError(ProtocolError("Connection aborted.", BadStatusLine))``)."""
    todo, seen = [exc], 0
    while todo and seen < 16:
        e = todo.pop(0)
        seen += 1
        if isinstance(e, kind):
            return e
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        for linked in (e.__cause__, e.__context__, getattr(e, "reason", None)):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return None


def protocol_error(exc: BaseException) -> UpstreamError | None:
    """An answer that is not HTTP (a garbage status line, an over-long or endless head): 502
    ``upstream_protocol_error``, not retried; ``None`` for any other failure."""
    found = find_cause(exc, http.client.HTTPException)
    if found is None or isinstance(found, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return None
    if isinstance(found, http.client.BadStatusLine):
        what = "the upstream did not answer with HTTP (its status line was not HTTP/1.x); check base_url"
    elif isinstance(found, http.client.LineTooLong):
        what = "the upstream sent a header line longer than HTTP clients accept"
    else:
        what = f"the upstream's answer is not valid HTTP ({type(found).__name__})"
    return UpstreamError(what, status=502, type="upstream_protocol_error")


def tls_error(exc: BaseException, secrets: Sequence[str]) -> UpstreamError:
    text = str(exc)
    if any(marker in text for marker in _NOT_TLS):
        return UpstreamError(
            "the upstream did not answer with TLS: is the port a plain HTTP one (base_url http:// instead of https://)?",
            status=502,
            type="upstream_protocol_error",
        )
    return NetworkError(f"TLS error talking to the upstream: {scrub(text, secrets)[:300]}")


def reason(exc: BaseException, secrets: Sequence[str]) -> str:
    """A short cause without the URL noise of urllib3's messages."""
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "timed out",
        "Connection reset",
        "Connection aborted",
        "Remote end closed",
    ):
        if marker in text:
            return marker.lower()
    return scrub(text, secrets)[:200]


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:  # asctime form: HTTP dates are always GMT
                when = when.replace(tzinfo=timezone.utc)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None


def error_from_response(resp: requests.Response, secrets: Sequence[str]) -> UpstreamError:
    """Map an upstream HTTP error to what the client can act on; read a bounded body, close."""
    status = resp.status_code
    try:
        raw = resp.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
    except Exception:  # noqa: BLE001 - a broken error body must not hide the status
        raw = b""
    finally:
        resp.close()
    message = ""
    utype = ""
    try:
        obj = _json.loads(raw)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            utype = str(err.get("type") or err.get("code") or "")
        elif isinstance(err, str):
            message = err
    except (ValueError, TypeError):
        message = raw.decode("utf-8", "replace")
    message = scrub(message, secrets)[:MAX_ERROR_MESSAGE] or f"HTTP {status}"  # scrub first: a cut could split the key
    headers: dict[str, str] = {}
    if status in (429, 529, 503) and resp.headers.get("retry-after"):
        headers["Retry-After"] = resp.headers["retry-after"]
    extra = {"upstream_status": status}
    if status in (401, 403):
        return UpstreamError(
            f"the upstream rejected the proxy's credentials ({message})", status=502, type="upstream_auth_error", extra=extra
        )
    if status == 429:
        return UpstreamError(f"upstream rate limit: {message}", status=429, type="upstream_rate_limited", headers=headers, extra=extra)
    if status in (529, 503) or utype == "overloaded_error":
        return UpstreamError(f"upstream overloaded: {message}", status=503, type="upstream_overloaded", headers=headers, extra=extra)
    if status == 413:
        return UpstreamError(f"upstream: {message}", status=413, type="payload_too_large", extra=extra)
    if status == 404:
        return UpstreamError(f"upstream: {message}", status=404, type="upstream_not_found", extra=extra)
    if 400 <= status < 500:
        return UpstreamError(f"upstream rejected the request: {message}", status=400, type="upstream_invalid_request", extra=extra)
    if status == 504:
        return UpstreamTimeout(f"upstream timeout: {message}", extra=extra)
    return UpstreamError(f"upstream error: {message}", status=502, type="upstream_error", extra=extra)
