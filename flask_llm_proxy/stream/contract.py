"""The contract's events, as the browser receives them (agentary-js's ``CloudProvider`` parses
them): one ``data:`` line of JSON per token, comments as keep-alives, ``[DONE]`` at the end."""
from __future__ import annotations

from .. import _json

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def encode_token(text: str, token_id: int) -> bytes:
    """The hot path: one text delta as one ``data:`` event, built without a dict."""
    return b'data: {"token":' + _json.dumps(text) + b',"tokenId":' + str(token_id).encode() + b"}\n\n"


def encode_event(payload: dict) -> bytes:
    return b"data: " + _json.dumps(payload) + b"\n\n"
