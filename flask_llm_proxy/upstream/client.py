"""The upstream call: one ``requests.Session`` per process, a request prepared once per provider,
retries before the first byte and timeouts (what failures mean: :mod:`.errors`).

Only this package talks to the network (:mod:`.body` reads what this opened). Requests are sent
with ``HTTPAdapter.send``: ``Session.request`` would re-read the environment and merge settings on
every call.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from .._compat import GEVENT_SSL_FIX, readable_now, ssl_patch_problem
from ..config import ProviderConfig
from ..errors import NetworkError, ProxyError, ProxyMisconfigured, UpstreamTimeout
from .errors import RETRY_STATUSES, error_from_response, find_cause, parse_retry_after, protocol_error, reason, tls_error
from .failover import Deployments
from .retry import RetryPolicy

log = logging.getLogger("flask_llm_proxy")


def backoff_sleep(seconds: float) -> None:
    """The wait between two attempts (gevent's sleep in a patched worker); one name for tests to stub."""
    time.sleep(seconds)


class _KernelPollCheck:
    sock: Any

    @property
    def is_connected(self) -> bool:  # urllib3's own, with a poll gevent does not stand in for
        return self.sock is not None and not readable_now(self.sock)


class _Connection(_KernelPollCheck, urllib3.connection.HTTPConnection):
    pass


class _TLSConnection(_KernelPollCheck, urllib3.connection.HTTPSConnection):
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class ProxyAdapter(HTTPAdapter):
    """requests' ``HTTPAdapter`` with what never changes for a configured upstream done once.

    ``HTTPAdapter.send`` looks up the connection pool, checks the CA bundle on disk, works out the
    request's path and fills a cookie jar on every request; through its subclassing hooks this does
    the first three once per URL and skips the jar (an API's cookies are never sent back); its
    pools check a pooled connection before reuse with the kernel's ``poll`` rather than gevent's
    (:func:`~flask_llm_proxy._compat.readable_now`). Sending, pooling, TLS, proxies and timeouts
    stay requests' and urllib3's own.
    """

    def __init__(self, pool_maxsize: int) -> None:
        # enough pools that urllib3 never evicts one this adapter keeps (one per upstream URL)
        super().__init__(pool_connections=256, pool_maxsize=pool_maxsize, max_retries=0)
        self._pools: dict[Any, Any] = {}
        self._verified: set[Any] = set()
        self._paths: dict[Any, str] = {}

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

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

    def __init__(self, url: str, headers: dict[str, str], verify: Any, cert: Any, proxies: MutableMapping[str, str]) -> None:
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
        self._targets: dict[tuple[str, str, str, str], Target] = {}
        self._lock = threading.Lock()
        self._ssl_problem: str | None = None
        self._deployments: dict[str, Deployments] = {}

    def deployments(self, provider: ProviderConfig) -> Deployments:
        """The in-flight counts and cool-downs of a provider's deployments in this process."""
        if self._pid != os.getpid():
            self.session()  # a new process (after a fork) starts with none in flight and none cooling
        found = self._deployments.get(provider.name)
        if found is None:
            found = self._deployments[provider.name] = Deployments(provider)
        return found

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
                    self._deployments = {}
                    self._session = session
                    self._pid = os.getpid()
        return self._session

    def target(self, provider: ProviderConfig, path: str, auth: Mapping[str, str], accept: str) -> Target:
        """The prepared request for ``provider`` + ``path``, made on first use in this process.

        URL and headers come from configuration only: nothing a client sends steers them. The
        environment (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) is read here, once, as
        ``Session.request`` would read it; a provider's own ``verify`` and ``cert`` win over it.
        """
        session = self.session()
        key = (provider.name, getattr(provider, "label", ""), path, accept)  # a deployment: its own target
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
        target = Target(prepared.url or url, {k: str(v) for k, v in prepared.headers.items()}, verify, provider.cert, env["proxies"])
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
        policy: RetryPolicy,
        on_retry: Callable[[ProxyError], None] | None = None,
        request_id: str = "",
    ) -> requests.Response:
        """POST with retries; return the open 2xx streaming response.

        Retried: connection failures, 5xx, 429 and 529, with exponential backoff that honours
        ``retry-after`` up to ``policy.retry_after_max``. Never retried: other 4xx, read timeouts, TLS
        and protocol errors. A connection the upstream closed without answering (an idle pooled
        one it had just dropped) is sent again at once, once, before any of that.
        """
        self.check_tls(target.url)
        attempt = 0
        while True:
            resp, err, retryable, retry_after = self.attempt(target, body, secrets, policy.timeout, request_id)
            if resp is not None:
                return resp
            assert err is not None
            delay = policy.delay(attempt, retry_after) if retryable else None
            if delay is None:
                err.retried = attempt > 0  # -> x-should-retry: false, so one layer retries, not two
                raise err
            attempt += 1
            log.info("request %s: upstream attempt %d failed (%s); retrying in %.2fs", request_id or "-", attempt, err.message, delay)
            if on_retry is not None:
                on_retry(err)
            backoff_sleep(delay)

    @staticmethod
    def wait(seconds: float) -> None:
        """The wait before another attempt (:func:`backoff_sleep`, which tests stub)."""
        backoff_sleep(seconds)

    def check_tls(self, url: str) -> None:
        self.session()
        if self._ssl_problem and url.startswith("https://"):
            raise ProxyMisconfigured("the proxy cannot open HTTPS connections in this worker; see the server log")

    def attempt(
        self, target: Target, body: bytes, secrets: Sequence[str], timeout: tuple[float, float], request_id: str
    ) -> tuple[requests.Response | None, ProxyError | None, bool, float | None]:
        """One attempt: ``(the open 2xx answer, None, ...)`` or ``(None, the error, whether another
        attempt may succeed, the upstream's retry-after in seconds)``."""
        resent = False
        while True:
            try:
                resp = self.send(target, body, request_id, timeout)
            except requests.exceptions.ConnectTimeout:
                return None, UpstreamTimeout("timed out connecting to the upstream"), True, None
            except requests.exceptions.ReadTimeout:
                return None, UpstreamTimeout("the upstream did not answer in time"), False, None
            except requests.exceptions.SSLError as exc:
                return None, tls_error(exc, secrets), False, None
            except requests.exceptions.ProxyError as exc:
                return None, NetworkError(f"could not reach the upstream through the HTTP proxy: {reason(exc, secrets)}"), True, None
            except requests.exceptions.ConnectionError as exc:
                if not resent and find_cause(exc, http.client.RemoteDisconnected) is not None:
                    resent = True
                    continue
                bad = protocol_error(exc)
                if bad is not None:
                    return None, bad, False, None
                return None, NetworkError(f"could not reach the upstream: {reason(exc, secrets)}"), True, None
            except requests.exceptions.RequestException as exc:
                return None, NetworkError(f"the upstream request failed: {reason(exc, secrets)}"), False, None
            except RecursionError:
                log.error(GEVENT_SSL_FIX)
                raise ProxyMisconfigured("the proxy cannot open HTTPS connections in this worker; see the server log") from None
            if resp.status_code < 300:
                return resp, None, False, None
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            return None, error_from_response(resp, secrets), resp.status_code in RETRY_STATUSES, retry_after
