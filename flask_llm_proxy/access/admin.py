"""Who may read the operator figures: a JWT claim, or the host's ``@proxy.admin_required``.

The token is looked for where the host's ``JWTManager`` looks (``JWT_TOKEN_LOCATION``: the
``Authorization`` header, or a cookie when the host signs its operators in with JWT cookies), so
every check flask-jwt-extended applies (signature, expiry, blocklist) applies here too. Without a
token the request is anonymous (401), unless the host's callback admits it from something else it
knows (a Flask-Login session, say); with one, the callback or else the claim decides (403 when no).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import current_app

from ..config import Settings
from ..errors import AuthenticationError, PermissionDenied
from .auth import JWT_ERRORS, JWT_EXTENSION_KEY, describe_jwt_error

log = logging.getLogger("flask_llm_proxy")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="llm-proxy-admin"'}


def _token() -> tuple[str | None, dict[str, Any]]:
    if JWT_EXTENSION_KEY not in current_app.extensions:
        return None, {}
    from flask_jwt_extended import get_jwt, verify_jwt_in_request

    try:
        found = verify_jwt_in_request(optional=True)
    except JWT_ERRORS as exc:  # a token that is there but wrong is a 401, never anonymous
        raise describe_jwt_error(exc) from None
    if not found:
        return None, {}
    claims = get_jwt()
    sub = claims.get(current_app.config.get("JWT_IDENTITY_CLAIM", "sub"))
    if sub is None:
        raise AuthenticationError("the token has no identity claim", headers=_CHALLENGE)
    return str(sub), claims


def require_admin(settings: Settings, callback: Callable[..., Any] | None) -> str:
    """The operator's identity, or :class:`AuthenticationError` (401) / :class:`PermissionDenied` (403)."""
    identity, claims = _token()
    if callback is not None:
        allowed = bool(callback(identity, claims))
    else:
        allowed = identity is not None and settings.admin_claim is not None and claims.get(settings.admin_claim) is True
    if allowed:
        return identity or "host-session"
    if identity is None:
        raise AuthenticationError("sign in: send 'Authorization: Bearer <JWT>' with an operator's token", headers=_CHALLENGE)
    what = f"the '{settings.admin_claim}' claim" if callback is None and settings.admin_claim else "the host's admin_required check"
    log.warning("operator figures refused to %s (%s)", identity, what)
    raise PermissionDenied(f"your token does not open the operator page ({what} refused it)")
