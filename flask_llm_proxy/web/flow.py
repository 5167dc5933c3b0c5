"""What the contract view and the native views share once a request passed its checks: the
app's state, the upstream call with its retry signal, and the accounting of an early failure."""
from __future__ import annotations

from typing import Any, Callable

from flask import Response, current_app
from werkzeug.exceptions import HTTPException

from .. import signals
from ..accounting.exchange import Exchange
from ..config import ProfileConfig, Settings
from ..errors import PermissionDenied, ProxyError
from ..providers.base import Adapter
from ..state import ProxyState

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}


def state() -> ProxyState:
    return current_app.extensions["llm_proxy"]  # type: ignore[no-any-return]


def require_profile(settings: Settings, profile: ProfileConfig | None) -> None:
    """``LLM_PROXY_REQUIRE_PROFILE``: a request to a provider's own endpoint is refused."""
    if profile is None and settings.require_profile:
        raise PermissionDenied(
            f"this proxy serves only its profiles: POST {settings.url_prefix}/profiles/<name> "
            f"(GET {settings.url_prefix}/models lists the ones you may use)", type="profile_required",
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
        ex.call.fail(err, before_stream=True)
        ex.finalize()
        raise
    except Exception:
        ex.call.fail(ProxyError("internal error in the proxy", status=500, type="internal_error"), before_stream=True)
        ex.finalize()
        raise


def count_retry(ex: Exchange, err: ProxyError) -> None:
    ex.call.retries += 1
    signals.upstream_retry.send(current_app._get_current_object(), request_id=ex.request.request_id, error=err)  # type: ignore[attr-defined]


def open_upstream(st: ProxyState, ex: Exchange, provider: Any, adapter: Adapter, body: bytes, accept: str = "text/event-stream",
                  max_retries: int | None = None) -> Any:
    """Send ``body`` to the provider's API (retrying before the first byte) and return the open
    2xx answer; URL and headers come from configuration, nothing a client sends steers them."""
    s = st.settings
    client = st.upstream
    target = client.target(provider, adapter.path, adapter.auth_headers(provider), accept)
    ex.call.secrets = provider.secrets
    return client.open(
        target,
        body,
        secrets=provider.secrets,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        max_retries=s.max_retries if max_retries is None else max_retries,
        backoff=s.retry_backoff,
        retry_after_max=s.retry_after_max,
        on_retry=lambda err: count_retry(ex, err),
        request_id=ex.request.request_id,
    )
