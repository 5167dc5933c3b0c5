"""What makes two requests the same question, and what a client asked of the cache.

The key is a SHA-256 over a canonical encoding (sorted keys, compact) of the request body the
proxy sends upstream, after translation and filtering, so it covers everything that changes the
answer (model, messages, system, tools, tool_choice, temperature, top_p, max_tokens, stop, seed,
the provider's extra fields) and nothing that does not (JSON key order, unknown client fields).
It also covers the kind of endpoint (a contract answer and a native one are stored in different
forms), the provider's name, type and base URL, and, in ``identity`` scope, the identity. Never the
API key. Redis sees only the hex digest, never a prompt.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import _json
from ..config import ProviderConfig

#: bumped when the stored form changes, so old entries are simply not found
FORMAT = 1


def cache_key(kind: str, provider: ProviderConfig, body: Any, identity: str | None) -> str:
    h = hashlib.sha256(_json.canonical([FORMAT, kind, provider.name, provider.type, provider.base_url, identity]))
    h.update(b"\n")
    h.update(_json.canonical(body))
    return h.hexdigest()


def directives(cache_control: str | None) -> tuple[bool, bool]:
    """``(read, write)`` from the request's ``Cache-Control``: ``no-cache`` skips the lookup but
    stores the fresh answer; ``no-store`` does neither."""
    if not cache_control:
        return True, True
    tokens = {t.strip().split("=", 1)[0].lower() for t in cache_control.split(",")}
    if "no-store" in tokens:
        return False, False
    if "no-cache" in tokens:
        return False, True
    return True, True
