"""Reading a request's JSON body: bounded in size and nesting, refused with a clear error."""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .. import _json
from ..errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

MAX_DEPTH = 64


def read_json(limit: int) -> Any:
    """Parse the body; refuse a too-large one from its length header or while reading it."""
    if not is_json_content_type(request.environ.get("CONTENT_TYPE", "")):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    raw = _read_body(limit)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = _json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    # Nesting needs an opening bracket per level: a body with few brackets needs no walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body, MAX_DEPTH):
        raise InvalidRequest(f"the request body is nested deeper than {MAX_DEPTH} levels")
    return body


def _read_body(limit: int) -> bytes:
    """The body through werkzeug (cached, so a host reading it after us gets it too). A declared
    length over the limit is refused unread; werkzeug stops reading a chunked body at its limit
    without an error, so it is asked for one byte more than ours."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; at most {limit} are accepted")
    request.max_content_length = limit + 1
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        return b"x" * (limit + 1)
    except ClientDisconnected:
        raise InvalidRequest(f"the request body ended before its declared Content-Length ({declared} bytes)") from None


def is_json_content_type(ct: str) -> bool:
    """``application/json`` (any parameters) or a ``+json`` type. A browser sends a cross-origin
    POST without asking first (no CORS preflight) only as text/plain, a form, or with no type: such
    a request is refused before it costs anything, so another site cannot spend the proxy's
    budget through its visitors' browsers, even with auth off."""
    if ct.startswith("application/json") and (len(ct) == 16 or ct[16] in "; "):
        return True
    mime = ct.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def too_deep(obj: Any, limit: int) -> bool:
    """Iterative, so a hostile body cannot exhaust the stack; JSON that deep is never needed."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False
