"""The host's callbacks, registered with decorators on the extension object, in the style of
flask-jwt-extended's loaders: ``@proxy.admin_required`` and the others below. Each is optional;
one ``Hooks`` object per extension object, shared by every app it was initialised with, so a
callback registered after ``init_app`` applies too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Callback = Callable[..., Any]


class Hooks:
    __slots__ = ("identity_loader", "before_upstream", "admin_required")

    def __init__(self) -> None:
        #: ``fn() -> str | None``: who is asking, when the host does not use JWT; None means 401
        self.identity_loader: Callback | None = None
        #: ``fn(request, identity) -> None``: may change the validated request (a ``ChatRequest`` on
        #: the contract endpoints, the provider body ``dict`` on the native ones) or refuse it by
        #: raising a :class:`~flask_llm_proxy.errors.ProxyError` or a werkzeug ``HTTPException``
        self.before_upstream: Callback | None = None
        #: ``fn(identity, claims) -> bool``: may this user open the operator page
        self.admin_required: Callback | None = None
