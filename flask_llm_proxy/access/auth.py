"""Who is asking: the JWT identity (the host's ``JWTManager``) or the client address.

Every JWT failure becomes a 401 in the contract's error shape, not flask-jwt-extended's own 401
and 422 bodies, and happens before any limit is counted or any upstream is called. Without auth
the identity is the client address, read behind exactly ``LLM_PROXY_TRUSTED_PROXIES`` hops the
way werkzeug's ``ProxyFix`` does, so a forged ``X-Forwarded-For`` cannot choose an identity.
Without auth and without a ``JWTManager`` on the app, ``Authorization`` and ``x-api-key`` are
ignored (the SDKs always send one): there is nothing to verify a token with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import current_app, g, request

from ..config import Settings
from ..errors import AuthenticationError, PermissionDenied

try:
    from jwt.exceptions import (
        ExpiredSignatureError,
        InvalidAlgorithmError,
        InvalidSignatureError,
        PyJWTError,
    )
except ImportError:  # pragma: no cover - PyJWT comes with flask-jwt-extended
    PyJWTError = ExpiredSignatureError = InvalidSignatureError = InvalidAlgorithmError = Exception  # type: ignore[misc,assignment]

from flask_jwt_extended.exceptions import JWTExtendedException, NoAuthorizationError

JWT_ERRORS: tuple[type[Exception], ...] = (JWTExtendedException, PyJWTError)

#: the key ``JWTManager.init_app`` registers itself under in ``app.extensions``
JWT_EXTENSION_KEY = "flask-jwt-extended"

log = logging.getLogger("flask_llm_proxy")


def describe_jwt_error(exc: BaseException) -> AuthenticationError:
    """A message that says what is wrong with the token without echoing it."""
    if isinstance(exc, NoAuthorizationError):
        msg = "missing credentials: send 'Authorization: Bearer <JWT>'"
    elif isinstance(exc, ExpiredSignatureError):
        msg = "the token has expired"
    elif isinstance(exc, InvalidSignatureError):
        msg = "the token signature is invalid"
    elif isinstance(exc, InvalidAlgorithmError):
        msg = "the token's signing algorithm is not allowed"
    elif isinstance(exc, PyJWTError):
        msg = f"the token is invalid ({type(exc).__name__})"
    else:
        msg = f"the token was rejected ({type(exc).__name__})"
    return AuthenticationError(msg, headers={"WWW-Authenticate": 'Bearer realm="llm-proxy"'})


def client_address(trusted_proxies: int) -> str:
    """The peer address, or the one ``trusted_proxies`` hops back in ``X-Forwarded-For``."""
    if trusted_proxies:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if len(hops) >= trusted_proxies:
            return hops[-trusted_proxies]
    return request.remote_addr or "unknown"


def _read_alt_header_as_authorization() -> None:
    """SDK compatibility: the Anthropic SDK sends its ``api_key`` as ``x-api-key``. A JWT there is
    put where flask-jwt-extended reads tokens (``JWT_HEADER_NAME``, with ``JWT_HEADER_TYPE``), so
    ``verify_jwt_in_request`` applies every check it applies to the Authorization header: signature
    and times, an access token only, the host's blocklist and claims checks."""
    environ = request.environ
    token = environ.get("HTTP_X_API_KEY")
    config = current_app.config
    header = "HTTP_" + str(config.get("JWT_HEADER_NAME", "Authorization")).upper().replace("-", "_")
    if not token or header in environ:
        return
    kind = config.get("JWT_HEADER_TYPE", "Bearer")
    environ[header] = f"{kind} {token}" if kind else token


def identify(settings: Settings, *, alt_header: bool = False, loader: Callable[[], Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Resolve (identity, claims) once per request; raise :class:`AuthenticationError`.

    ``loader``: the host's ``@proxy.identity_loader`` (a Flask-Login session, an API-key header...),
    used instead of JWTs when registered: its ``None`` is a 401."""
    cached = g.get("_llm_proxy_identity")
    if cached is not None:
        return cached
    claims: dict[str, Any] = {}
    identity: str | None = None
    environ = request.environ
    if loader is not None:
        found = loader()
        if found is None or found == "":
            raise AuthenticationError("not signed in", headers={"WWW-Authenticate": 'Bearer realm="llm-proxy"'})
        result = (str(found), claims)
        g._llm_proxy_identity = result
        return result
    if JWT_EXTENSION_KEY not in current_app.extensions:
        # No JWTManager: flask-jwt-extended has no config to read (KeyError 'JWT_TOKEN_LOCATION').
        # init_app refuses require_auth in this state; should it get here anyway, fail closed.
        if settings.require_auth:
            log.error("LLM_PROXY_REQUIRE_AUTH is on but the app has no JWTManager: call JWTManager(app)")
            raise AuthenticationError("this proxy requires a JWT but the server has no JWT setup (no JWTManager)")
    elif settings.require_auth or "HTTP_AUTHORIZATION" in environ or (alt_header and "HTTP_X_API_KEY" in environ):
        try:
            if alt_header:
                _read_alt_header_as_authorization()
            from flask_jwt_extended import get_jwt, verify_jwt_in_request

            found = verify_jwt_in_request(optional=not settings.require_auth)
            claims = get_jwt() if found else {}
        except JWT_ERRORS as exc:
            raise describe_jwt_error(exc) from None
        if claims:
            sub = claims.get(current_app.config.get("JWT_IDENTITY_CLAIM", "sub"))
            identity = str(sub) if sub is not None else None
            if identity is None:
                raise AuthenticationError("the token has no identity claim")
    if identity is None:
        identity = "ip:" + client_address(settings.trusted_proxies)
    result = (identity, claims)
    g._llm_proxy_identity = result
    return result


def check_model_claim(settings: Settings, claims: dict[str, Any], model: str) -> None:
    """Optional narrowing per user: a claim listing the models (names or patterns) they may use."""
    if not settings.models_claim or settings.models_claim not in claims:
        return
    allowed = claims[settings.models_claim]
    if isinstance(allowed, str):
        allowed = [allowed]
    if not isinstance(allowed, Iterable) or not _matches(model, allowed):
        raise PermissionDenied(f"your token does not allow the model {model!r}", type="model_not_allowed")


def _matches(model: str, patterns: Iterable[Any]) -> bool:
    from fnmatch import fnmatchcase

    return any(isinstance(p, str) and fnmatchcase(model, p) for p in patterns)
