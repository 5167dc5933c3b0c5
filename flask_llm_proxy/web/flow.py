"""What the contract view and the native views share once a request passed its checks: the
app's state, the upstream call with its retry signal, and the accounting of an early failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from flask import Response, current_app
from werkzeug.exceptions import HTTPException

from .. import signals
from ..accounting.exchange import Exchange
from ..config import ProfileConfig, ProviderConfig, Settings
from ..errors import PermissionDenied, ProxyError
from ..providers.base import Adapter
from ..state import ProxyState
from ..stream.relay import StreamBody
from ..upstream.failover import open_failover

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}


def stream_response(ex: Exchange, body: Iterator[bytes], content_type: str = SSE_CONTENT_TYPE) -> Response:
    """A streamed answer: written as it is produced (no buffering by werkzeug or nginx), and
    accounted for exactly once when it ends, whichever way (:class:`StreamBody`). The content
    type is given whole, so werkzeug has no mimetype to complete."""
    return Response(StreamBody(body, ex.finalize), status=200, content_type=content_type, headers=STREAM_HEADERS, direct_passthrough=True)


def state() -> ProxyState:
    return current_app.extensions["llm_proxy"]


def require_profile(settings: Settings, profile: ProfileConfig | None) -> None:
    """``LLM_PROXY_REQUIRE_PROFILE``: a request to a provider's own endpoint is refused."""
    if profile is None and settings.require_profile:
        raise PermissionDenied(
            f"this proxy serves only its profiles: POST {settings.url_prefix}/profiles/<name> "
            f"(GET {settings.url_prefix}/models lists the ones you may use)",
            type="profile_required",
        )


def before_upstream(st: ProxyState, request: Any, identity: str) -> None:
    """The host's ``@proxy.before_upstream``, if any: a refusal keeps the host's status and message
    and takes the proxy's error shape."""
    fn = st.hooks.before_upstream
    if fn is None:
        return
    try:
        fn(request, identity)
    except ProxyError:
        raise
    except HTTPException as exc:
        raise ProxyError(exc.description or exc.name, status=exc.code or 403, type="refused") from None


def accounted(ex: Exchange, call: Callable[..., Response], *args: Any) -> Response:
    """``call(*args)`` for an exchange the extension is accounting for. An error that escapes it
    (before the response streams) is the answer's status: recorded here, once; a bug or a setting
    no check foresaw as the 500 the client gets."""
    try:
        return call(*args)
    except ProxyError as err:
        told = ex.call.fail(err, before_stream=True)
        ex.finalize()
        if told is not err:  # a stream: false answer cut at LLM_PROXY_MAX_STREAM_SECONDS
            raise told from None
        raise
    except Exception:
        ex.call.fail(ProxyError("internal error in the proxy", status=500, type="internal_error"), before_stream=True)
        ex.finalize()
        raise


def count_retry(ex: Exchange, err: ProxyError) -> None:
    ex.call.retries += 1
    signals.upstream_retry.send(current_app._get_current_object(), request_id=ex.request.request_id, error=err)  # type: ignore[attr-defined]


def open_upstream(
    st: ProxyState,
    ex: Exchange,
    provider: Any,
    adapter: Adapter,
    body: bytes,
    accept: str = "text/event-stream",
    max_retries: int | None = None,
) -> Any:
    """Send ``body`` to the provider's API (retrying before the first byte) and return the open
    2xx answer; URL and headers come from configuration, nothing a client sends steers them."""
    client = st.upstream
    ex.call.secrets = provider.secrets
    policy = st.retries  # the app's, made once; a copy only for a request that retried already
    if max_retries is not None and max_retries != policy.max_retries:
        policy = replace(policy, max_retries=max_retries)
    options: dict[str, Any] = dict(
        secrets=provider.secrets, policy=policy, on_retry=lambda err: count_retry(ex, err), request_id=ex.request.request_id
    )
    if not provider.deployments:
        return client.open(client.target(provider, adapter.path, adapter.auth_headers(provider), accept), body, **options)
    deps = client.deployments(provider)
    resp, i = open_failover(client, deps, adapter.path, adapter.auth_headers, accept, body, cooldown=st.settings.cooldown, **options)
    ex.call.deployment = deps.items[i].label
    ex.call.release = lambda: deps.release(i)
    return resp


def deployment_failed(st: ProxyState, ex: Exchange, provider: ProviderConfig, err: ProxyError) -> bool:
    """The deployment that opened this request's stream failed in its first event (Anthropic's
    ``overloaded_error`` after a 200): it cools down like one that answered 529. Returns whether
    the provider has deployments, so that the request is sent again at once (to another one, or,
    all cooling, after the usual backoff or as the typed error)."""
    if ex.call.deployment is None or not provider.deployments:
        return False
    deps = st.upstream.deployments(provider)
    if ex.call.release is not None:
        ex.call.release()
        ex.call.release = None
    deps.cool(deps.index(ex.call.deployment), err, None, st.settings.cooldown, ex.request.request_id)
    ex.call.deployment = None
    return True
