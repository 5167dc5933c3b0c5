"""The upstream HTTP side: one ``requests.Session`` per process, retries before the first byte,
timeouts and error mapping.

Only this module (and :mod:`body`, which reads what it opened) talks to the network. Each
provider's request is prepared once and copied per request, and sent with ``HTTPAdapter.send``:
``Session.request`` would re-read the environment and merge settings on every call. Its errors are
:mod:`errors` classes whose messages never contain the API key (upstream messages are scrubbed
before they are kept).
"""
from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping, Sequence

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from . import _json
from ._compat import GEVENT_SSL_FIX, ssl_patch_problem
from .errors import NetworkError, ProxyError, ProxyMisconfigured, UpstreamError, UpstreamTimeout, scrub

log = logging.getLogger("flask_llm_proxy")

MAX_ERROR_BODY = 65536
MAX_ERROR_MESSAGE = 500  # characters of an upstream's error message passed on to the client
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
#: OpenSSL's words for a peer that does not speak TLS (a plain HTTP port behind an https:// URL)
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure", "UNEXPECTED_RECORD", "packet length too long")


class ProxyAdapter(HTTPAdapter):
    """requests' ``HTTPAdapter`` with what never changes for a configured upstream done once.

    ``HTTPAdapter.send`` looks up the connection pool, checks the CA bundle on disk, works out the
    request's path and fills a cookie jar on every request; through its subclassing hooks this does
    the first three once per URL and skips the jar (an API's cookies are never sent back). Sending,
    pooling, TLS, proxies and timeouts stay requests' and urllib3's own.
    """

    def __init__(self, pool_maxsize: int) -> None:
        # enough pools that urllib3 never evicts one this adapter keeps (one per upstream URL)
        super().__init__(pool_connections=256, pool_maxsize=pool_maxsize, max_retries=0)
        self._pools: dict[Any, Any] = {}
        self._verified: set[Any] = set()
        self._paths: dict[Any, str] = {}

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None, cert: Any = None) -> Any:
        key = (request.url, verify, cert, tuple(sorted(proxies.items())) if proxies else ())
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        return pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        key = (id(conn), url, verify, cert)
        if key not in self._verified:
            super().cert_verify(conn, url, verify, cert)
            self._verified.add(key)

    def request_url(self, request: Any, proxies: Any) -> str:
        key = (request.url, tuple(sorted(proxies.items())) if proxies else ())
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = super().request_url(request, proxies)
        return path

    def build_response(self, req: Any, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response


class Target:
    """One upstream endpoint of one provider: its request prepared once (URL and every header but
    the request id), and what ``HTTPAdapter.send`` needs besides (TLS settings, proxies)."""

    __slots__ = ("url", "headers", "verify", "cert", "proxies")

    def __init__(self, url: str, headers: dict[str, str], verify: Any, cert: Any, proxies: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.verify = verify
        self.cert = cert
        self.proxies = proxies


class UpstreamClient:
    """The ``requests.Session`` of this process and the prepared targets.

    Made lazily and re-made after a fork (the pid changes), so no socket or SSL object is created
    before gunicorn forks its workers. The adapter's pool is sized to the worker's concurrency: the
    default of 10 would discard and re-open connections under load.
    """

    def __init__(self, pool_maxsize: int) -> None:
        self.pool_maxsize = pool_maxsize
        self._pid = -1
        self._session: requests.Session | None = None
        self._adapter: ProxyAdapter | None = None
        self._targets: dict[tuple[str, str, str], Target] = {}
        self._lock = threading.Lock()
        self._ssl_problem: str | None = None

    def session(self) -> requests.Session:
        if self._pid != os.getpid() or self._session is None:
            with self._lock:
                if self._pid != os.getpid() or self._session is None:
                    self._ssl_problem = ssl_patch_problem()
                    if self._ssl_problem:
                        log.error("%s HTTPS upstream calls are refused until then.", self._ssl_problem)
                    session = requests.Session()
                    adapter = ProxyAdapter(self.pool_maxsize)
                    session.mount("https://", adapter)
                    session.mount("http://", adapter)
                    self._adapter = adapter
                    self._targets = {}
                    self._session = session
                    self._pid = os.getpid()
        return self._session  # type: ignore[return-value]

    def target(self, provider: Any, path: str, auth: Mapping[str, str], accept: str) -> Target:
        """The prepared request for ``provider`` + ``path``, made on first use in this process.

        URL and headers come from configuration only: nothing a client sends steers them. The
        environment (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) is read here, once, as
        ``Session.request`` would read it; a provider's own ``verify`` and ``cert`` win over it.
        """
        session = self.session()
        key = (provider.name, path, accept)
        found = self._targets.get(key)
        if found is not None:
            return found
        url = provider.base_url + path
        headers = {
            **provider.headers,
            **auth,
            "content-type": "application/json",
            "accept": accept,
            "accept-encoding": "identity",  # compressed SSE would be held back by the decompressor
        }
        prepared = requests.Request("POST", url, headers=headers).prepare()  # requests' checks of URL and headers, once
        env = session.merge_environment_settings(url, {}, True, None, None)
        verify = env["verify"] if provider.verify is True else provider.verify
        target = Target(prepared.url or url, dict(prepared.headers), verify, provider.cert, env["proxies"])
        self._targets[key] = target
        return target

    def send(self, target: Target, body: bytes, request_id: str, timeout: tuple[float, float]) -> requests.Response:
        prepared = requests.PreparedRequest()  # filled from the target: no URL or header parsing per request
        prepared.method = "POST"
        prepared.url = target.url
        prepared.headers = {**target.headers, "Content-Length": str(len(body)), "x-request-id": request_id}  # type: ignore[assignment]
        prepared.body = body
        assert self._adapter is not None
        return self._adapter.send(prepared, stream=True, timeout=timeout, verify=target.verify, cert=target.cert, proxies=target.proxies)

    def open(
        self,
        target: Target,
        body: bytes,
        *,
        secrets: Sequence[str],
        connect_timeout: float,
        read_timeout: float,
        max_retries: int,
        backoff: float,
        retry_after_max: float,
        on_retry: Callable[[ProxyError], None] | None = None,
        request_id: str = "",
    ) -> requests.Response:
        """POST with retries; return the open 2xx streaming response.

        Retried: connection failures, 5xx, 429 and 529, with exponential backoff that honours
        ``retry-after`` up to ``retry_after_max``. Never retried: other 4xx, read timeouts, TLS
        and protocol errors. A connection the upstream closed without answering (an idle pooled
        one it had just dropped) is sent again at once, once, before any of that.
        """
        self.session()
        if self._ssl_problem and target.url.startswith("https://"):
            raise ProxyMisconfigured("the proxy cannot open HTTPS connections in this worker; see the server log")
        attempt = 0
        resent = False
        while True:
            retry_after: float | None = None
            try:
                resp = self.send(target, body, request_id, (connect_timeout, read_timeout))
            except requests.exceptions.ConnectTimeout:
                err: ProxyError = UpstreamTimeout("timed out connecting to the upstream")
                retryable = True
            except requests.exceptions.ReadTimeout:
                raise UpstreamTimeout("the upstream did not answer in time", retried=attempt > 0) from None
            except requests.exceptions.SSLError as exc:
                err, retryable = tls_error(exc, secrets), False
            except requests.exceptions.ProxyError as exc:
                err, retryable = NetworkError(f"could not reach the upstream through the HTTP proxy: {_reason(exc, secrets)}"), True
            except requests.exceptions.ConnectionError as exc:
                if not resent and _find(exc, http.client.RemoteDisconnected) is not None:
                    resent = True
                    continue
                bad = protocol_error(exc)
                err, retryable = (bad, False) if bad else (NetworkError(f"could not reach the upstream: {_reason(exc, secrets)}"), True)
            except requests.exceptions.RequestException as exc:
                err, retryable = NetworkError(f"the upstream request failed: {_reason(exc, secrets)}"), False
            except RecursionError:
                log.error(GEVENT_SSL_FIX)
                raise ProxyMisconfigured("the proxy cannot open HTTPS connections in this worker; see the server log") from None
            else:
                if resp.status_code < 300:
                    return resp
                err = error_from_response(resp, secrets)
                retryable = resp.status_code in RETRY_STATUSES
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if not retryable or attempt >= max_retries or (retry_after is not None and retry_after > retry_after_max):
                err.retried = attempt > 0  # -> x-should-retry: false, so one layer retries, not two
                raise err
            delay = backoff * (2**attempt)
            if retry_after is not None:
                delay = max(delay, retry_after)
            attempt += 1
            log.info("request %s: upstream attempt %d failed (%s); retrying in %.2fs", request_id or "-", attempt, err.message, delay)
            if on_retry is not None:
                on_retry(err)
            time.sleep(delay)


def _find(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
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
    found = _find(exc, http.client.HTTPException)
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
            status=502, type="upstream_protocol_error",
        )
    return NetworkError(f"TLS error talking to the upstream: {scrub(text, secrets)[:300]}")


def _reason(exc: BaseException, secrets: Sequence[str]) -> str:
    """A short cause without the URL noise of urllib3's messages."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset", "Connection aborted", "Remote end closed"):
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
        return UpstreamError(f"the upstream rejected the proxy's credentials ({message})", status=502, type="upstream_auth_error", extra=extra)
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
