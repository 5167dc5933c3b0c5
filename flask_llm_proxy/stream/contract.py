"""The contract's events, as the browser receives them (agentary-js's ``CloudProvider`` parses
them): one ``data:`` line of JSON per token, comments as keep-alives, ``[DONE]`` at the end.

Reasoning events (only for a client that sent ``include_reasoning: true``) are token events with
no text: ``{"token": "", "tokenId": n, "reasoning": "..."}``. agentary-js counts every JSON
``data:`` line as a token and builds the answer from ``token``: these keep its ``tokenId``
sequence gapless and its answer text unchanged (an SSE ``event:`` name would not hide them
from it: it reads the ``data:`` line after any ``event:`` line as a token all the same)."""

from __future__ import annotations

from .. import _json

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def encode_token(text: str, token_id: int) -> bytes:
    """The hot path: one text delta as one ``data:`` event, built without a dict."""
    return b'data: {"token":' + _json.dumps(text) + b',"tokenId":' + str(token_id).encode() + b"}\n\n"


def encode_event(payload: dict) -> bytes:
    return b"data: " + _json.dumps(payload) + b"\n\n"


def encode_reasoning(text: str, token_id: int) -> bytes:
    """A reasoning delta, built like :func:`encode_token` (thinking streams hundreds of them)."""
    return b'data: {"token":"","tokenId":' + str(token_id).encode() + b',"reasoning":' + _json.dumps(text) + b"}\n\n"
