"""The upstream HTTP side: one pooled session per process, retries before the first byte,
timeouts, error mapping, and a body reader that notices silence.

Only this module talks to the network. Its errors are :mod:`errors` classes whose messages never
contain the API key (upstream messages are scrubbed before they are kept).
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping, Sequence

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from . import _json, transport
from .errors import scrub
from .errors import NetworkError, ProxyError, ProxyMisconfigured, UpstreamError, UpstreamTimeout

log = logging.getLogger("flask_llm_proxy")

READ_SIZE = 65536
MAX_ERROR_BODY = 65536
MAX_ERROR_MESSAGE = 500  # characters of an upstream's error message passed on to the client
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})

GEVENT_SSL_FIX = (
    "gevent patched 'ssl' after urllib3 imported it (gunicorn --preload, or an import before the "
    "gevent worker started): HTTPS calls to the upstream fail with RecursionError. Fix: put "
    "'from gevent import monkey; monkey.patch_all()' on the first line of gunicorn.conf.py "
    "(example_app/gunicorn.conf.py does), or run without --preload."
)


def ssl_patch_problem() -> str | None:
    """Detect the gevent + preload trap before it turns every request into a RecursionError.

    urllib3 keeps a reference to the ``SSLContext`` class it imported; when gevent patched
    ``ssl`` later, that reference is the unpatched class. Re-pointing urllib3 at the patched
    class repairs this process; the log line still names the proper fix. Returns the problem
    text when it could not be repaired.
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


class UpstreamClient:
    """Holds the ``requests.Session`` of this process.

    Made lazily and re-made after a fork (the pid changes), so no socket or SSL object is created
    before gunicorn forks its workers. The pool is sized to the worker's concurrency: the default
    of 10 would discard and re-open connections under load.
    """

    def __init__(self, pool_maxsize: int, *, fast: bool = True) -> None:
        self.pool_maxsize = pool_maxsize
        self.fast = fast  # the lean transport; False: requests all the way (unit tests mock it)
        self._pool: transport.Pool | None = None
        self._pool_pid = -1
        self._pid = -1
        self._session: requests.Session | None = None
        self._lock = threading.Lock()
        self._ssl_problem: str | None = None
        self._adapter: HTTPAdapter | None = None
        self._verify: str | bool = True
        self._proxies: dict[str, dict[str, str]] = {}

    def session(self) -> requests.Session:
        if self._pid != os.getpid() or self._session is None:
            with self._lock:
                if self._pid != os.getpid() or self._session is None:
                    self._ssl_problem = ssl_patch_problem()
                    if self._ssl_problem:
                        log.error("%s HTTPS upstream calls are refused until then.", self._ssl_problem)
                    s = requests.Session()
                    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=self.pool_maxsize, max_retries=0)
                    s.mount("https://", adapter)
                    s.mount("http://", adapter)
                    self._adapter = adapter
                    # The environment (REQUESTS_CA_BUNDLE, HTTPS_PROXY, NO_PROXY) is read once per
                    # process and URL here, not on every request as Session.request does.
                    self._verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
                    self._proxies = {}
                    self._session = s
                    self._pid = os.getpid()
        return self._session

    def _send(self, url: str, headers: Mapping[str, str], body: bytes, timeout: tuple[float, float]) -> Any:
        """The lean transport, unless the host is reached through an HTTP(S) proxy."""
        proxies = self._proxies.get(url)
        if proxies is None:
            base = url.split("/", 3)
            proxies = self._proxies[url] = requests.utils.get_environ_proxies("/".join(base[:3]))
        if self.fast and not proxies:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = transport.Pool(self.pool_maxsize, self._verify)
                self._pool_pid = os.getpid()
            return transport.post(self._pool, url, dict(headers), body, timeout[0], timeout[1])
        return self._send_requests(url, headers, body, timeout, proxies)

    def _send_requests(self, url: str, headers: Mapping[str, str], body: bytes, timeout: tuple[float, float], proxies: dict[str, str]) -> requests.Response:
        """``HTTPAdapter.send`` with a request prepared by hand.

        ``Session.request`` re-reads the environment, merges settings and re-parses the URL on
        every call (about 1 ms of CPU per request); the URL and headers here come from config
        and need none of it. The adapter still does pooling, TLS, timeouts and the response.
        """
        req = requests.PreparedRequest()
        req.method = "POST"
        req.url = url
        req.headers = CaseInsensitiveDict(headers)
        req.headers["Content-Length"] = str(len(body))
        req.body = body
        return self._adapter.send(req, stream=True, timeout=timeout, verify=self._verify, cert=None, proxies=proxies)

    def open(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        secrets: Sequence[str],
        connect_timeout: float,
        read_timeout: float,
        max_retries: int,
        backoff: float,
        retry_after_max: float,
        on_retry: Any = None,
        request_id: str = "",
    ) -> tuple[requests.Response, int]:
        """POST with retries; return the open 2xx streaming response and the number of retries.

        Retried: connection failures, 5xx, 429 and 529, with exponential backoff that honours
        ``retry-after`` up to ``retry_after_max``. Never retried: other 4xx and read timeouts.
        """
        self.session()
        if self._ssl_problem and url.startswith("https://"):
            raise ProxyMisconfigured("the proxy cannot open HTTPS connections in this worker; see the server log")
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                resp = self._send(url, headers, body, (connect_timeout, read_timeout))
            except requests.exceptions.ConnectTimeout:
                err: ProxyError = UpstreamTimeout("timed out connecting to the upstream")
                retryable = True
            except requests.exceptions.ReadTimeout:
                raise UpstreamTimeout("the upstream did not answer in time", retried=attempt > 0) from None
            except requests.exceptions.SSLError as exc:
                err, retryable = NetworkError(f"TLS error talking to the upstream: {scrub(str(exc), secrets)}"), False
            except requests.exceptions.RequestException as exc:
                err, retryable = NetworkError(f"could not reach the upstream: {_reason(exc, secrets)}"), True
            except transport.ConnectTimeout:
                err, retryable = UpstreamTimeout("timed out connecting to the upstream"), True
            except transport.ReadTimeout:
                raise UpstreamTimeout("the upstream did not answer in time", retried=attempt > 0) from None
            except ssl.SSLError as exc:
                err, retryable = NetworkError(f"TLS error talking to the upstream: {scrub(str(exc), secrets)}"), False
            except (OSError, ConnectionError) as exc:
                err, retryable = NetworkError(f"could not reach the upstream: {_reason(exc, secrets)}"), True
            except RecursionError:
                log.error(GEVENT_SSL_FIX)
                raise ProxyMisconfigured("the proxy cannot open HTTPS connections in this worker; see the server log") from None
            else:
                if resp.status_code < 300:
                    return resp, attempt
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


# --- reading the body -----------------------------------------------------------------------


def _socket_of(resp: requests.Response) -> socket.socket | None:
    conn = getattr(resp.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def abort(resp: Any) -> None:
    """Close an unfinished upstream response now: the upstream sees its connection closed.

    ``shutdown`` first, because a reader blocked in ``recv`` on another thread is not woken by
    ``close`` alone; the connection is dropped, never returned to the pool mid-stream.
    """
    if isinstance(resp, transport.LeanResponse):
        resp.abort()
        return
    sock = _socket_of(resp)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    resp.close()


def finish(resp: Any) -> None:
    """The body was read to its end: hand the connection back to the pool for reuse."""
    if isinstance(resp, transport.LeanResponse):
        resp.finish()
        return
    resp._content_consumed = True  # type: ignore[attr-defined]  # else requests closes the socket
    resp.close()
