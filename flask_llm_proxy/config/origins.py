"""``LLM_PROXY_CORS_ORIGINS``: exact origins and regular expressions, checked at ``init_app``."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from .checks import str_list

_REGEX_CHARS = set("\\^$*+{}[]|()")  # '.' and '?' occur in plain URLs too
_DEFAULT_PORTS = {"http": 80, "https": 443}


def cors_origins(key: str, v: Any) -> tuple[str, ...]:
    """Exact origins and regular expressions; an origin is ``scheme://host[:port]`` and nothing more.

    A browser's ``Origin`` never has a path, a trailing '/' or a default port: an entry like
    "https://app.example.com/" would match no request (extension.cors_origin_matchers makes it a
    pattern), and CORS would silently be off. Entries with regex syntax stay patterns.
    """
    origins = str_list(key, v)
    for o in origins:
        if o == "*":
            continue
        if is_ipv6_origin(o):
            continue  # an exact origin with an IPv6 address (extension.cors_origin_matchers escapes it)
        if _ipv6_host(o):  # an IPv6 URL with a path, a trailing '/' or a bad port: no origin
            raise ConfigError(key, f"{o!r} is not an origin: use scheme://[address][:port], e.g. 'http://[::1]:3000'")
        if o.lower().startswith(("http://", "https://")) and not _REGEX_CHARS & set(o):
            try:
                parts = urlsplit(o)
                port = parts.port
            except ValueError:
                parts, port = None, None
            if parts is None or not parts.hostname or port == 0:
                raise ConfigError(key, f"{o!r} is not an origin: use scheme://host[:port], e.g. 'https://app.example.com'")
            fixed = f"{parts.scheme}://{parts.hostname}" + ("" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}")
            if fixed.lower() != o.lower():  # case is left alone: a pattern matches ignoring case
                raise ConfigError(
                    key, f"{o!r} is not an origin (scheme://host[:port]; no path, trailing '/' or default port): use {fixed!r}"
                )
        try:
            re.compile(o)
        except re.error as exc:
            raise ConfigError(key, f"{o!r} is neither an origin nor a valid regular expression: {exc}") from None
    return origins


def _ipv6_host(o: str) -> bool:
    """An http(s) URL whose host is an IPv6 address (a pattern like ``https://[a-z]+\\.test`` is not)."""
    if not o.lower().startswith(("http://[", "https://[")):
        return False
    try:
        host = urlsplit(o).hostname
        return host is not None and ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def is_ipv6_origin(o: str) -> bool:
    """``http://[::1]:8080``: an exact origin, though its brackets look like a regex character class."""
    if not _ipv6_host(o):
        return False
    parts = urlsplit(o)
    try:
        port = parts.port
    except ValueError:  # no number, or out of range
        return False
    return port != 0 and not (parts.path or parts.query or parts.fragment or o.endswith(("?", "#")))
