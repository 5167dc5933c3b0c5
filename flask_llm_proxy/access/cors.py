"""CORS pinned to ``LLM_PROXY_CORS_ORIGINS`` with flask-cors, on the proxy's blueprint only."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint

from ..config import Settings, is_ipv6_origin

EXPOSED_HEADERS = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "X-Request-ID",
    "x-should-retry",
    "X-LLM-Proxy-Cache",
    "X-LLM-Proxy-Deployment",
    "X-LLM-Proxy-Fallback",
]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Request-ID", "x-api-key", "anthropic-version", "Cache-Control"]
_EXACT_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d+)?$")


def apply_cors(bp: Blueprint, settings: Settings) -> None:
    """Before the blueprint is registered (flask-cors asserts that). The origins are always given
    explicitly: ``CORS(blueprint)`` reads no app config and would default to ``*``."""
    if not settings.cors_origins:
        return
    from flask_cors import CORS

    CORS(
        bp,
        # the operator page and its figures are same-origin only, whatever the proxy allows
        resources=re.compile(rf"^(?!{re.escape(settings.url_prefix)}/admin(?:/|$))"),
        origins=cors_origin_matchers(settings.cors_origins),
        supports_credentials=settings.cors_credentials,
        expose_headers=EXPOSED_HEADERS,
        allow_headers=ALLOWED_HEADERS,
        methods=["GET", "POST", "OPTIONS"],
        max_age=settings.cors_max_age,
        vary_header=True,
    )


def cors_origin_matchers(origins: tuple[str, ...]) -> list[Any]:
    """Exact origins stay strings; regular expressions are anchored at both ends.

    flask-cors matches a pattern with ``re.match`` (start only): ``https://.*\\.example\\.org``
    would also allow ``https://chat.example.org.attacker.net``.
    """
    out: list[Any] = []
    for origin in origins:
        if origin == "*" or _EXACT_ORIGIN.match(origin):
            out.append(origin)
        elif is_ipv6_origin(origin):  # flask-cors would read its brackets as a pattern
            out.append(re.compile(re.escape(origin) + r"\Z", re.IGNORECASE))
        else:
            out.append(re.compile(rf"(?:{origin})\Z", re.IGNORECASE))
    return out
