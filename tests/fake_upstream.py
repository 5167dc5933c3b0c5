#!/usr/bin/env python3
"""Fake LLM upstream speaking the Anthropic / OpenAI streaming wire formats.

A small, fast, stdlib-only (asyncio) HTTP/1.1 server used by the integration
tests (our proxy runs under gunicorn and talks to it) and by the benchmarks
(thousands of concurrent slow streams on one core).  It reproduces the real
wire formats byte for byte:

* ``POST /v1/messages``          Anthropic Messages (``x-api-key`` + ``anthropic-version``)
* ``POST /v1/chat/completions``  OpenAI Chat Completions (``Authorization: Bearer``)
* ``POST /v1/responses``         OpenAI Responses (``Authorization: Bearer``)

``"stream": true`` answers ``200 text/event-stream; charset=utf-8`` with a
``Transfer-Encoding: chunked`` body (one chunked frame per SSE event); otherwise
the provider's normal non-streamed JSON object is returned.  A wrong or missing
key gives ``401`` in the provider's error shape; an Anthropic request without
``anthropic-version`` gives ``400 invalid_request_error`` (as the real API does).
Anthropic takes the key from ``x-api-key`` only, unless ``--anthropic-bearer``
is given: then ``Authorization: Bearer <key>`` is accepted too (newer official
Anthropic SDKs send the API key that way).

Control endpoints (no auth)
---------------------------
* ``GET  /_fake/requests[?id=X]`` JSON list of request records (see below)
* ``GET  /_fake/concurrency?id=X`` ``{"active": n, "peak": m}``: API requests with scenario id X
  being answered right now, and the most at once since the last reset (a concurrency cap's proof)
* ``POST /_fake/reset``           clear the records, the per-id attempt counters and the peaks
* ``GET  /_fake/health``          ``ok``

Anything else is ``404`` (JSON); a non-POST on an API path is ``405``.

Running it
----------
``python tests/fake_upstream.py --port 0 [--host 127.0.0.1] [--certfile F --keyfile F [--client-ca F]]
[--key SECRET] [--backlog 4096] [--max-records 100000] [--anthropic-bearer] [--label A]``

prints exactly one line ``PORT <n>`` to stdout once listening and runs until
SIGTERM/SIGINT (exit status 0).  From Python use :class:`FakeUpstreamProcess`::

    with FakeUpstreamProcess() as up:          # or tls=(certfile, keyfile)
        requests.post(up.base_url + "/v1/messages", ...)
        up.requests(id="x")                    # the request log
        up.wait_for_request("x", lambda r: r["client_closed"])
        up.reset()

(Use a ``requests.Session`` with ``trust_env = False`` in tests so that
``HTTP(S)_PROXY`` variables cannot hijack calls to 127.0.0.1.)  Inside an
existing event loop, ``await start_server(...)`` runs it in-process.

Performance: one asyncio Protocol per connection (no reader task) and paced
plain deltas are written by a shared per-millisecond timer rather than by one
``asyncio.sleep`` per delta, so a paced delta costs ~3 us of Python plus the
kernel's send() (~12-15 us on loopback here): ~45-50k deltas/s per core, and
5,000 concurrent slow streams are fine (the fd soft limit is raised to the hard
limit at start).  Knobs that alter framing (split, crlf, cr, ping, unknown,
multiline) take the slower per-task path.

Token text
----------
Token ``i`` is :func:`token_text(i) <token_text>`; a complete stream of ``n``
tokens carries :func:`expected_text(n) <expected_text>`.  The words cycle through
plain ASCII, multi-byte UTF-8 (``ö``, ``ï``, ``👋``, ``日本語``), ``\\n``, ``"`` and
``\\`` so JSON escaping and UTF-8 splitting are exercised.

Knobs (``name=value`` words in the prompt)
------------------------------------------
They are read from the text of the LAST user message (Anthropic / chat:
``messages[-1]`` with role user, ``content`` as a string or the ``text`` of its
blocks; Responses: ``input`` as a string, or the last item with role user whose
``content`` is a string or a list of ``input_text`` parts).  Unknown words are
ignored, as are malformed values.

==================  ==========================================================
``tokens=N``        number of text deltas (default 5)
``pace_ms=M``       delay between deltas (default 0)
``first_ms=M``      delay after the headers and the opening events
                    (message_start / role chunk / response.created ...) before
                    the first delta (default 0)
``headers_ms=M``    delay before sending the response headers (also delays
                    error responses and non-streamed bodies)
``id=X``            scenario id: recorded, and attempt counters are per id
                    (without ``id``, per identical last-user-message text)
``status=A,B,..``   attempt k (0-based, per id) answers with status list[k] in the
                    provider's error shape; a 200 entry or attempts past the end
                    of the list answer normally
``retry_after=S``   add ``retry-after: S`` to those error responses
``echo_headers=1``  error responses, and the in-stream error event of
                    ``error_after``, quote all received request header lines
                    verbatim (like an upstream echoing the API key back)
``drop_after=K``    after K deltas close the TCP connection (FIN, after the
                    bytes already written are flushed) without the terminating
                    zero chunk and without the closing events
``hang=headers``    send nothing at all; wait until the peer closes
``hang_after=K``    after K deltas stop sending; wait until the peer closes
``error_after=K``   after K deltas send the provider's in-stream error event, then
                    end the body normally (zero chunk; no ``[DONE]``)
``error_attempts=N`` error_after applies to the first N attempts (per id) only;
                    later ones stream normally
``split=N``         write the SSE body in chunked frames of at most N bytes,
                    each flushed separately with ``await asyncio.sleep(0)`` in
                    between (frame boundaries follow the body offset, so they
                    split events, lines and multi-byte UTF-8 characters)
``crlf=1``          ``\\r\\n`` line endings in the SSE body
``cr=1``            bare ``\\r`` line endings
``ping=1``          between deltas: Anthropic ``event: ping``; OpenAI (both APIs)
                    the SSE comment line ``: keep-alive``
``unknown=1``       between deltas: an unknown event (Anthropic
                    ``future_event_type``; Responses ``response.future.thing``
                    (takes a sequence_number); chat: a chunk with ``choices: []``
                    and an unknown top-level key ``future_field``)
``multiline=1``     Anthropic: every ``data:`` payload is split over two ``data:``
                    lines after the comma that ends its leading ``"type":"..."``
                    member (after the ``{`` when there is no comma)
``tool=1``          after the text, one ``get_weather`` tool call with arguments
                    ``{"city": "Oslo", "unit": "celsius"}`` in 4 fragments (ids:
                    ``toolu_01`` / ``call_1`` / Responses item ``fc_1`` with
                    call_id ``call_1``); stop reason ``tool_use`` / ``tool_calls``
``framing=F``       ``length``: the stream's body has a ``Content-Length`` and no chunking;
                    ``close``: neither, the body ends when the connection closes (as some
                    OpenAI-compatible servers send it). Pacing applies; the interruption
                    knobs (drop/hang/error_after), split and the ticker do not
``gzip=1``          the stream's body is gzip-compressed (``content-encoding: gzip``), each
                    event flushed (Z_SYNC_FLUSH) into its own chunk, so it can be read as it
                    arrives
``garbage=1``       answer with a line that is not HTTP (an SSH banner), then close
``head=truncated``  answer with the status line and half a header line, then close
``think=N``         the model reasons first: N reasoning deltas (:func:`reasoning_text`), written
                    with the opening events, before the first text delta. Anthropic: a
                    ``thinking`` block at index 0 (``thinking_delta`` x N, one ``signature_delta``
                    of :data:`SIGNATURE`, ``content_block_stop``), the text block at index 1;
                    chat: chunks with ``"content": null, "reasoning_content"`` (DeepSeek's form)
                    or ``reasoning`` (see ``think_as``); Responses: a ``reasoning`` item
                    ``rs_1`` at output_index 0 with one summary part
                    (``response.reasoning_summary_text.delta`` x N), the message at index 1.
                    The N tokens are billed as output: usage reports ``output_tokens`` =
                    tokens + N, plus ``completion_tokens_details.reasoning_tokens`` /
                    ``output_tokens_details.reasoning_tokens`` = N. Non-streamed answers carry
                    the thinking block / ``reasoning_content`` / reasoning item whole
``think_as=F``      chat with ``think``: the delta's field, ``reasoning_content`` (default)
                    or ``reasoning`` (vLLM's and OpenRouter's name)
``input_tokens=N``  reported input tokens (default :func:`count_input_tokens`)
``stop_reason=S``   Anthropic stop_reason / chat finish_reason (default
                    ``end_turn`` / ``stop``, or ``tool_use`` / ``tool_calls``)
==================  ==========================================================

Several fakes, one prompt (a provider's deployments): a server started with ``--label A``
(``FakeUpstreamProcess(label="A")``) also reads words ``name@A=value`` as ``name=value``,
after the unlabelled ones, and ignores those for other labels: ``status@A=529`` makes A
answer 529 while B, given the same prompt, streams normally.

K for drop_after / hang_after / error_after is clamped to ``tokens``: K >= tokens
triggers after the last text delta, before any closing event.  When several are
given the smallest K wins (ties: drop, hang, error).  Pacing applies before the
interruption as if it were the next delta.  Non-streamed requests honour
status, retry_after, echo_headers, headers_ms, hang=headers, tokens, tool,
input_tokens and stop_reason; the other knobs only affect streams.

Reported usage (see :func:`reported_usage`): input tokens = ``input_tokens=N`` or
the number of whitespace-separated words over all text of the request
(Anthropic ``system`` + every message; chat every message; Responses
``instructions`` + ``input``), at least 1.  Output tokens = ``tokens``, plus 5
when ``tool=1``, plus ``think``.  The values are the same whether or not the stream completed.
The request's attachments (image and document blocks, Responses ``input_image`` / ``input_file``
parts) are recorded in the body like everything else and counted as no input tokens.

Request record
--------------
One per API request, appended when its headers and body have been read and
updated while it proceeds (the log keeps the last ``--max-records``)::

    {"seq": 1, "id": "x" | None, "conn": 3,   # connection number (keep-alive reuse)
     "path": "/v1/messages", "method": "POST",
     "headers": {lowercased name: value}, "body": <parsed JSON, or the raw text>,
     "stream": bool, "attempt": k, "status": 200 | None (until sent),
     "tokens_sent": k,
     "completed": bool,      # the scripted response was written in full
                             # (final event + zero chunk, or a full JSON/error body)
     "outcome": "pending" | "complete" | "http_error" | "error_event"
                | "dropped" | "hung" | "client_closed",
     "client_closed": bool,  # peer closed before the response was finished
     "closed_after_ms": float | None,  # request start -> close detected
     "usage": {"input_tokens": n, "output_tokens": m},
     "usage_sent": bool,     # the final usage was actually sent to the client
     "concurrent": n}        # with an id: requests of that id being answered when it began, itself included

A closed peer is noticed immediately (the connection protocol sees EOF) even
while the response is sleeping or hanging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import selectors
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "FakeUpstreamProcess",
    "FakeUpstream",
    "Plan",
    "token_text",
    "expected_text",
    "parse_directives",
    "count_input_tokens",
    "reported_usage",
    "directive_text",
    "error_body",
    "start_server",
    "TOOL_NAME",
    "TOOL_ARGUMENTS",
    "TOOL_ARGUMENT_FRAGMENTS",
    "reasoning_text",
    "expected_reasoning",
    "SIGNATURE",
]

# --------------------------------------------------------------------------
# Deterministic content
# --------------------------------------------------------------------------

_WORDS: tuple[str, ...] = (
    "Hello",
    " wörld",
    ",",
    " naïve",
    " 👋",
    " ok",
    "\n",
    ' "quoted"',
    " back\\slash",
    " 日本語",
    " end",
)

TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Oslo", "unit": "celsius"}'
TOOL_ARGUMENT_FRAGMENTS: tuple[str, ...] = ('{"city": ', '"Oslo", ', '"unit": "cel', 'sius"}')
TOOL_OUTPUT_TOKENS = 5

_THOUGHTS: tuple[str, ...] = ("Let", " me", " think", " über", " 🤔", "\n", ' "this"', " through")
#: the ``signature_delta`` that ends a fake Anthropic thinking block
SIGNATURE = "EqQBCkYIBRgCKkDfakeSignatureOfTheThinkingBlock0123456789abcdefABCDEF=="

CREATED = 1700000000


def token_text(i: int) -> str:
    """Text of token ``i``: a word from a fixed cycle followed by ``i``.

    The cycle contains multi-byte UTF-8 (incl. a 4-byte emoji), a newline, a
    double quote and a backslash.
    """
    return f"{_WORDS[i % len(_WORDS)]}{i}"


def reasoning_text(i: int) -> str:
    """Text of reasoning delta ``i`` (the ``think=N`` knob), cycling through multi-byte UTF-8 too."""
    return f"{_THOUGHTS[i % len(_THOUGHTS)]}{i}"


def expected_reasoning(n: int) -> str:
    """Concatenated reasoning of ``think=n``."""
    return "".join(reasoning_text(i) for i in range(n))


def expected_text(n: int) -> str:
    """Concatenated text of a complete stream of ``n`` tokens."""
    return "".join(token_text(i) for i in range(n))


@lru_cache(maxsize=1 << 16)
def _tok_json(i: int) -> str:
    return json.dumps(token_text(i), ensure_ascii=False)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------

ANTHROPIC = "anthropic"
CHAT = "chat"
RESPONSES = "responses"
API_PATHS = {"/v1/messages": ANTHROPIC, "/v1/chat/completions": CHAT, "/v1/responses": RESPONSES}

_INT_KNOBS = (
    "tokens",
    "pace_ms",
    "first_ms",
    "headers_ms",
    "drop_after",
    "hang_after",
    "error_after",
    "split",
    "crlf",
    "cr",
    "ping",
    "unknown",
    "multiline",
    "tool",
    "echo_headers",
    "input_tokens",
    "error_attempts",
    "gzip",
    "garbage",
    "think",
)


@dataclass
class Plan:
    """The behaviour requested by the ``name=value`` words of a prompt."""

    tokens: int = 5
    pace_ms: int = 0
    first_ms: int = 0
    headers_ms: int = 0
    id: str | None = None
    status: list[int] = field(default_factory=list)
    retry_after: str | None = None
    drop_after: int | None = None
    hang: str | None = None
    hang_after: int | None = None
    error_after: int | None = None
    error_attempts: int | None = None
    split: int = 0
    crlf: int = 0
    cr: int = 0
    ping: int = 0
    unknown: int = 0
    multiline: int = 0
    tool: int = 0
    think: int = 0
    think_as: str = "reasoning_content"
    echo_headers: int = 0
    input_tokens: int | None = None
    stop_reason: str | None = None
    framing: str | None = None
    gzip: int = 0
    garbage: int = 0
    head: str | None = None


def parse_directives(text: str, label: str | None = None) -> Plan:
    """Parse the knobs out of a prompt text (unknown or malformed words ignored); ``label``: this
    server's, whose ``name@label=value`` words apply after the plain ones."""
    plan = Plan()
    words = text.split()
    if label is not None:
        mine = f"@{label}="
        words = [w for w in words if "@" not in w.partition("=")[0]] + [w.replace(mine, "=", 1) for w in words if mine in w]
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not value or "@" in name:
            continue
        if name in _INT_KNOBS:
            try:
                n = int(value)
            except ValueError:
                continue
            if n < 0:
                continue
            setattr(plan, name, min(n, 10_000_000))
        elif name == "id":
            plan.id = value
        elif name == "status":
            try:
                plan.status = [int(s) for s in value.split(",") if s]
            except ValueError:
                continue
        elif name == "retry_after":
            plan.retry_after = value
        elif name == "hang":
            plan.hang = value
        elif name == "stop_reason":
            plan.stop_reason = value
        elif name == "framing" and value in ("length", "close"):
            plan.framing = value
        elif name == "think_as" and value in ("reasoning_content", "reasoning"):
            plan.think_as = value
        elif name == "head":
            plan.head = value
    return plan


def _content_text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return " ".join(parts)
    return ""


def directive_text(provider: str, body: Any) -> str:
    """The text the knobs are read from: the last user message of ``body``."""
    if not isinstance(body, dict):
        return ""
    if provider == RESPONSES:
        inp = body.get("input")
        if isinstance(inp, str):
            return inp
        if isinstance(inp, list) and inp:
            items = [it for it in inp if isinstance(it, dict)]
            users = [it for it in items if it.get("role") == "user"]
            item = users[-1] if users else (items[-1] if items else None)
            if item is not None:
                return _content_text(item.get("content", item.get("text")))
        return ""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ""
    dicts = [m for m in msgs if isinstance(m, dict)]
    users = [m for m in dicts if m.get("role") == "user"]
    msg = users[-1] if users else (dicts[-1] if dicts else None)
    return _content_text(msg.get("content")) if msg is not None else ""


def count_input_tokens(provider: str, body: Any) -> int:
    """Default reported input tokens: whitespace-separated words over all request text, min 1."""
    if not isinstance(body, dict):
        return 1
    texts: list[str] = []
    if provider == RESPONSES:
        if isinstance(body.get("instructions"), str):
            texts.append(body["instructions"])
        inp = body.get("input")
        if isinstance(inp, str):
            texts.append(inp)
        elif isinstance(inp, list):
            for it in inp:
                if isinstance(it, dict):
                    texts.append(_content_text(it.get("content", it.get("text"))))
    else:
        if provider == ANTHROPIC:
            texts.append(_content_text(body.get("system")))
        msgs = body.get("messages")
        if isinstance(msgs, list):
            for m in msgs:
                if isinstance(m, dict):
                    texts.append(_content_text(m.get("content")))
    return max(1, sum(len(t.split()) for t in texts))


def reported_usage(provider: str, body: Any) -> dict[str, int]:
    """``{"input_tokens", "output_tokens"}`` the fake reports for this request body.

    ``provider`` is ``"anthropic"``, ``"chat"`` or ``"responses"`` (or an API path).
    """
    provider = API_PATHS.get(provider, provider)
    plan = parse_directives(directive_text(provider, body))
    return _usage(provider, body, plan)


def _usage(provider: str, body: Any, plan: Plan) -> dict[str, int]:
    inp = plan.input_tokens if plan.input_tokens is not None else count_input_tokens(provider, body)
    out = plan.tokens + plan.think + (TOOL_OUTPUT_TOKENS if plan.tool else 0)
    usage = {"input_tokens": inp, "output_tokens": out}
    if plan.think:
        usage["reasoning_tokens"] = plan.think  # billed as output by every provider, so part of it
    return usage


# --------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}

_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    500: ("server_error", "server_error", "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", "server_error", "The engine is currently overloaded, please try again later"),
}


def error_body(provider: str, status: int, message: str | None = None) -> bytes:
    """JSON error body of ``provider`` for an HTTP ``status``."""
    if provider == ANTHROPIC:
        etype, msg = _ANTHROPIC_ERRORS.get(status, ("api_error", "Internal server error"))
        if status not in _ANTHROPIC_ERRORS and 400 <= status < 500:
            etype, msg = "invalid_request_error", "Invalid request"
        obj: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": message or msg}}
    else:
        default = (
            ("server_error", "server_error", "The server had an error")
            if status >= 500
            else ("invalid_request_error", None, "Invalid request")
        )
        etype, code, msg = _OPENAI_ERRORS.get(status, default)
        obj = {"error": {"message": message or msg, "type": etype, "param": None, "code": code}}
    return _dumps(obj).encode()


# --------------------------------------------------------------------------
# Stream builders: every method returns SSE text using "\n" line endings
# --------------------------------------------------------------------------


def _multiline(payload: str) -> str:
    """Split a JSON payload over two data: lines at a point between JSON tokens."""
    cut = 1
    if payload.startswith('{"type":'):
        comma = payload.find(",")
        if comma > 0:
            cut = comma + 1
    return payload[:cut] + "\ndata: " + payload[cut:]


@lru_cache(maxsize=1 << 16)
def _anthropic_delta(i: int) -> str:
    return (
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":' + _tok_json(i) + "}}\n\n"
    )


def _frame(data: bytes) -> bytes:
    """One chunked-transfer frame."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@lru_cache(maxsize=1 << 16)
def _anthropic_frame(i: int) -> bytes:
    return _frame(_anthropic_delta(i).encode())


@lru_cache(maxsize=1 << 16)
def _chat_frame(head: str, i: int) -> bytes:
    return _frame((head + _tok_json(i) + '},"finish_reason":null}]}\n\n').encode())


@lru_cache(maxsize=1 << 16)
def _tok_bytes(i: int) -> bytes:
    return _tok_json(i).encode()


class _Builder:
    """Common interface of the three wire formats."""

    reports_usage = True

    def __init__(self, plan: Plan, body: dict[str, Any], usage: dict[str, int]) -> None:
        self.plan = plan
        self.body = body
        self.model = body.get("model") if isinstance(body.get("model"), str) else "fake-model"
        self.model_json = json.dumps(self.model, ensure_ascii=False)
        self.usage = usage
        self.text_cache: str | None = None

    @property
    def text(self) -> str:
        if self.text_cache is None:
            self.text_cache = expected_text(self.plan.tokens)
        return self.text_cache

    def preamble(self) -> list[str]:
        raise NotImplementedError

    def delta(self, i: int) -> str:
        raise NotImplementedError

    def delta_frame(self, i: int) -> bytes:
        """Chunked frame of delta ``i`` with plain "\\n" line endings (the hot path)."""
        return _frame(self.delta(i).encode())

    def between(self) -> list[str]:
        raise NotImplementedError

    def closing(self) -> list[str]:
        raise NotImplementedError

    def error_event(self, message: str | None = None) -> str:
        """The in-stream error event; ``message`` replaces the provider's default text."""
        raise NotImplementedError

    def full_json(self) -> dict[str, Any]:
        raise NotImplementedError


class _Anthropic(_Builder):
    def ev(self, name: str, payload: str) -> str:
        if self.plan.multiline:
            payload = _multiline(payload)
        return f"event: {name}\ndata: {payload}\n\n"

    def stop_reason(self) -> str:
        return self.plan.stop_reason or ("tool_use" if self.plan.tool else "end_turn")

    @property
    def text_index(self) -> int:
        return 1 if self.plan.think else 0  # the thinking block comes first

    def preamble(self) -> list[str]:
        start = (
            '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
            '"content":[],"model":' + self.model_json + ',"stop_reason":null,"stop_sequence":null,'
            '"usage":{"input_tokens":' + str(self.usage["input_tokens"]) + ',"output_tokens":1}}}'
        )
        out = [self.ev("message_start", start)]
        if self.plan.think:
            out.append(
                self.ev(
                    "content_block_start",
                    '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}',
                )
            )
            out.append(self.ev("ping", '{"type": "ping"}'))
            out.extend(
                self.ev(
                    "content_block_delta",
                    '{"type":"content_block_delta","index":0,"delta":'
                    '{"type":"thinking_delta","thinking":' + _dumps(reasoning_text(k)) + "}}",
                )
                for k in range(self.plan.think)
            )
            out.append(
                self.ev(
                    "content_block_delta",
                    '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"' + SIGNATURE + '"}}',
                )
            )
            out.append(self.ev("content_block_stop", '{"type":"content_block_stop","index":0}'))
        out.append(
            self.ev(
                "content_block_start",
                '{"type":"content_block_start","index":' + str(self.text_index) + ',"content_block":{"type":"text","text":""}}',
            )
        )
        if not self.plan.think:
            out.append(self.ev("ping", '{"type": "ping"}'))
        return out

    def delta_frame(self, i: int) -> bytes:
        if not self.plan.multiline and not self.plan.think:
            return _anthropic_frame(i)
        return _frame(self.delta(i).encode())

    def delta(self, i: int) -> str:
        if not self.plan.multiline and not self.plan.think:
            return _anthropic_delta(i)
        return self.ev(
            "content_block_delta",
            '{"type":"content_block_delta","index":' + str(self.text_index) + ',"delta":{"type":"text_delta","text":' + _tok_json(i) + "}}",
        )

    def between(self) -> list[str]:
        out = []
        if self.plan.ping:
            out.append(self.ev("ping", '{"type": "ping"}'))
        if self.plan.unknown:
            out.append(self.ev("future_event_type", '{"type":"future_event_type"}'))
        return out

    def closing(self) -> list[str]:
        t = self.text_index
        out = [self.ev("content_block_stop", '{"type":"content_block_stop","index":%d}' % t)]
        if self.plan.tool:
            out.append(
                self.ev(
                    "content_block_start",
                    _dumps(
                        {
                            "type": "content_block_start",
                            "index": t + 1,
                            "content_block": {"type": "tool_use", "id": "toolu_01", "name": TOOL_NAME, "input": {}},
                        }
                    ),
                )
            )
            for frag in TOOL_ARGUMENT_FRAGMENTS:
                out.append(
                    self.ev(
                        "content_block_delta",
                        _dumps(
                            {"type": "content_block_delta", "index": t + 1, "delta": {"type": "input_json_delta", "partial_json": frag}}
                        ),
                    )
                )
            out.append(self.ev("content_block_stop", '{"type":"content_block_stop","index":%d}' % (t + 1)))
        out.append(
            self.ev(
                "message_delta",
                _dumps(
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": self.stop_reason(), "stop_sequence": None},
                        "usage": {"output_tokens": self.usage["output_tokens"]},
                    }
                ),
            )
        )
        out.append(self.ev("message_stop", '{"type":"message_stop"}'))
        return out

    def error_event(self, message: str | None = None) -> str:
        if message is None:
            return self.ev("error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
        return self.ev("error", _dumps({"type": "error", "error": {"type": "overloaded_error", "message": message}}))

    def full_json(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": self.text}]
        if self.plan.think:
            content.insert(0, {"type": "thinking", "thinking": expected_reasoning(self.plan.think), "signature": SIGNATURE})
        if self.plan.tool:
            content.append({"type": "tool_use", "id": "toolu_01", "name": TOOL_NAME, "input": json.loads(TOOL_ARGUMENTS)})
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason(),
            "stop_sequence": None,
            "usage": {"input_tokens": self.usage["input_tokens"], "output_tokens": self.usage["output_tokens"]},
        }


class _Chat(_Builder):
    def __init__(self, plan: Plan, body: dict[str, Any], usage: dict[str, int]) -> None:
        super().__init__(plan, body, usage)
        so = body.get("stream_options")
        self.include_usage = isinstance(so, dict) and so.get("include_usage") is True
        self.reports_usage = self.include_usage
        self.head = (
            'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":' + str(CREATED) + ',"model":' + self.model_json + ","
        )
        self.delta_head = self.head + '"choices":[{"index":0,"delta":{"content":'
        self.delta_tail = '},"finish_reason":null}]}\n\n'

    def finish_reason(self) -> str:
        return self.plan.stop_reason or ("tool_calls" if self.plan.tool else "stop")

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        return self.head + '"choices":[{"index":0,"delta":' + _dumps(delta) + ',"finish_reason":' + _dumps(finish) + "}]}\n\n"

    def reasoning_delta(self, k: int) -> dict[str, Any]:
        """DeepSeek's form (``content`` null beside ``reasoning_content``), or vLLM's ``reasoning``."""
        if self.plan.think_as == "reasoning":
            return {"reasoning": reasoning_text(k)}
        return {"content": None, "reasoning_content": reasoning_text(k)}

    def preamble(self) -> list[str]:
        out = [self.chunk({"role": "assistant", "content": ""})]
        out.extend(self.chunk(self.reasoning_delta(k)) for k in range(self.plan.think))
        return out

    def delta(self, i: int) -> str:
        return self.delta_head + _tok_json(i) + self.delta_tail

    def delta_frame(self, i: int) -> bytes:
        return _chat_frame(self.delta_head, i)

    def between(self) -> list[str]:
        out = []
        if self.plan.ping:
            out.append(": keep-alive\n\n")
        if self.plan.unknown:
            out.append(self.head + '"choices":[],"future_field":{"x":1}}\n\n')
        return out

    def closing(self) -> list[str]:
        out = []
        if self.plan.tool:
            out.append(
                self.chunk(
                    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}]}
                )
            )
            for frag in TOOL_ARGUMENT_FRAGMENTS:
                out.append(self.chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
        out.append(self.chunk({}, self.finish_reason()))
        if self.include_usage:
            i, o = self.usage["input_tokens"], self.usage["output_tokens"]
            details = (',"completion_tokens_details":{"reasoning_tokens":%d}' % self.plan.think) if self.plan.think else ""
            out.append(
                self.head + '"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
                '"total_tokens":%d%s}}\n\n' % (i, o, i + o, details)
            )
        out.append("data: [DONE]\n\n")
        return out

    def error_event(self, message: str | None = None) -> str:
        if message is None:
            return 'data: {"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}\n\n'
        return "data: " + _dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}}) + "\n\n"

    def full_json(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.plan.think:
            message[self.plan.think_as] = expected_reasoning(self.plan.think)
        if self.plan.tool:
            message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}}]
        i, o = self.usage["input_tokens"], self.usage["output_tokens"]
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason()}],
            "usage": {
                "prompt_tokens": i,
                "completion_tokens": o,
                "total_tokens": i + o,
                **({"completion_tokens_details": {"reasoning_tokens": self.plan.think}} if self.plan.think else {}),
            },
        }


class _Responses(_Builder):
    def __init__(self, plan: Plan, body: dict[str, Any], usage: dict[str, int]) -> None:
        super().__init__(plan, body, usage)
        self.seq = 0
        self.mi = 1 if plan.think else 0  # the message's output_index: a reasoning item comes first
        self.delta_head = (
            'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            '"item_id":"msg_1","output_index":%d,"content_index":0,"delta":' % self.mi
        )
        self.delta_head_b = self.delta_head.encode()

    def ev(self, name: str, obj: dict[str, Any]) -> str:
        obj["sequence_number"] = self.seq
        self.seq += 1
        return f"event: {name}\ndata: {_dumps(obj)}\n\n"

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": self.body.get("instructions"),
            "max_output_tokens": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    def message_item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "annotations": [], "text": text}]
        return {"id": "msg_1", "type": "message", "status": status, "content": content, "role": "assistant"}

    def tool_item(self, status: str, arguments: str) -> dict[str, Any]:
        return {"id": "fc_1", "type": "function_call", "status": status, "arguments": arguments, "call_id": "call_1", "name": TOOL_NAME}

    def usage_obj(self) -> dict[str, Any]:
        i, o = self.usage["input_tokens"], self.usage["output_tokens"]
        return {
            "input_tokens": i,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": o,
            "output_tokens_details": {"reasoning_tokens": self.plan.think},
            "total_tokens": i + o,
        }

    def reasoning_item(self, summary: str | None) -> dict[str, Any]:
        return {"id": "rs_1", "type": "reasoning", "summary": [] if summary is None else [{"type": "summary_text", "text": summary}]}

    def output(self) -> list[dict[str, Any]]:
        out = [self.message_item("completed", self.text)]
        if self.plan.think:
            out.insert(0, self.reasoning_item(expected_reasoning(self.plan.think)))
        if self.plan.tool:
            out.append(self.tool_item("completed", TOOL_ARGUMENTS))
        return out

    def reasoning_events(self) -> list[str]:
        """A reasoning item with one summary part, as with ``reasoning: {"summary": "auto"}``."""
        ids = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
        summary = expected_reasoning(self.plan.think)
        out = [
            self.ev(
                "response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": self.reasoning_item(None)}
            ),
            self.ev(
                "response.reasoning_summary_part.added",
                {"type": "response.reasoning_summary_part.added", **ids, "part": {"type": "summary_text", "text": ""}},
            ),
        ]
        out.extend(
            self.ev(
                "response.reasoning_summary_text.delta",
                {"type": "response.reasoning_summary_text.delta", **ids, "delta": reasoning_text(k)},
            )
            for k in range(self.plan.think)
        )
        out += [
            self.ev("response.reasoning_summary_text.done", {"type": "response.reasoning_summary_text.done", **ids, "text": summary}),
            self.ev(
                "response.reasoning_summary_part.done",
                {"type": "response.reasoning_summary_part.done", **ids, "part": {"type": "summary_text", "text": summary}},
            ),
            self.ev(
                "response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": self.reasoning_item(summary)}
            ),
        ]
        return out

    def preamble(self) -> list[str]:
        return [
            self.ev("response.created", {"type": "response.created", "response": self.response("in_progress", [], None)}),
            self.ev("response.in_progress", {"type": "response.in_progress", "response": self.response("in_progress", [], None)}),
            *(self.reasoning_events() if self.plan.think else []),
            self.ev(
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": self.mi, "item": self.message_item("in_progress", None)},
            ),
            self.ev(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "item_id": "msg_1",
                    "output_index": self.mi,
                    "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "text": ""},
                },
            ),
        ]

    def delta(self, i: int) -> str:
        seq = self.seq
        self.seq += 1
        return self.delta_head + _tok_json(i) + ',"sequence_number":' + str(seq) + "}\n\n"

    def delta_frame(self, i: int) -> bytes:
        seq = self.seq
        self.seq += 1
        return _frame(self.delta_head_b + _tok_bytes(i) + b',"sequence_number":%d}\n\n' % seq)

    def between(self) -> list[str]:
        out = []
        if self.plan.ping:
            out.append(": keep-alive\n\n")
        if self.plan.unknown:
            out.append(self.ev("response.future.thing", {"type": "response.future.thing"}))
        return out

    def closing(self) -> list[str]:
        text = self.text
        mi = self.mi
        out = [
            self.ev(
                "response.output_text.done",
                {"type": "response.output_text.done", "item_id": "msg_1", "output_index": mi, "content_index": 0, "text": text},
            ),
            self.ev(
                "response.content_part.done",
                {
                    "type": "response.content_part.done",
                    "item_id": "msg_1",
                    "output_index": mi,
                    "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "text": text},
                },
            ),
            self.ev(
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": mi, "item": self.message_item("completed", text)},
            ),
        ]
        if self.plan.tool:
            out.append(
                self.ev(
                    "response.output_item.added",
                    {"type": "response.output_item.added", "output_index": mi + 1, "item": self.tool_item("in_progress", "")},
                )
            )
            for frag in TOOL_ARGUMENT_FRAGMENTS:
                out.append(
                    self.ev(
                        "response.function_call_arguments.delta",
                        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": mi + 1, "delta": frag},
                    )
                )
            out.append(
                self.ev(
                    "response.function_call_arguments.done",
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": "fc_1",
                        "output_index": mi + 1,
                        "arguments": TOOL_ARGUMENTS,
                    },
                )
            )
            out.append(
                self.ev(
                    "response.output_item.done",
                    {"type": "response.output_item.done", "output_index": mi + 1, "item": self.tool_item("completed", TOOL_ARGUMENTS)},
                )
            )
        out.append(
            self.ev(
                "response.completed",
                {"type": "response.completed", "response": self.response("completed", self.output(), self.usage_obj())},
            )
        )
        return out

    def error_event(self, message: str | None = None) -> str:
        return self.ev("error", {"type": "error", "code": "server_error", "message": message or "The server had an error", "param": None})

    def full_json(self) -> dict[str, Any]:
        return self.response("completed", self.output(), self.usage_obj())


_BUILDERS: dict[str, type[_Builder]] = {ANTHROPIC: _Anthropic, CHAT: _Chat, RESPONSES: _Responses}


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------

_MAX_HEAD = 64 * 1024
_MAX_BUFFER = 64 * 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    raw_headers: list[str]
    body: bytes
    keep_alive: bool


class _Active:
    """The API request a connection is currently answering."""

    __slots__ = ("rec", "t0", "finished")

    def __init__(self, rec: dict[str, Any], t0: float) -> None:
        self.rec = rec
        self.t0 = t0
        self.finished = False


class _Conn(asyncio.Protocol):
    """One client connection (an asyncio Protocol: no reader task, EOF is seen at once).

    Incoming bytes go to ``buf``; the request handler coroutine waits on
    ``_wait_data``.  EOF or a lost connection calls :meth:`peer_gone`, which marks
    the request being answered as ``client_closed`` even while it sleeps or hangs.
    """

    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        server.conn_seq += 1
        self.id = server.conn_seq
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = bytearray()
        self.eof = False
        self.paused = False
        self.active: _Active | None = None
        self.task: asyncio.Task[None] | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = self.loop.create_task(self.server.handle(self))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_BUFFER:
            self.transport.abort()
            return
        w = self._data_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        self.peer_gone()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer_gone()
        self.paused = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- helpers ----------------------------------------------------------

    def peer_gone(self) -> None:
        """The peer closed (EOF or failed write): mark the active request, wake waiters."""
        if self.eof:
            return
        self.eof = True
        act = self.active
        if act is not None and not act.finished:
            act.finished = True
            rec = act.rec
            rec["client_closed"] = True
            rec["closed_after_ms"] = round((self.loop.time() - act.t0) * 1000.0, 1)
            rec["outcome"] = "client_closed"
        for w in (self._data_waiter, self._closed_waiter):
            if w is not None and not w.done():
                w.set_result(None)

    async def _wait_data(self) -> None:
        self._data_waiter = self.loop.create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    async def wait_closed(self) -> None:
        """Wait until the peer has gone."""
        if self.eof:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self.loop.create_future()
        await self._closed_waiter

    async def drain(self) -> bool:
        """Wait while the transport buffer is above its high-water mark; False if the peer went."""
        while self.paused and not self.eof:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        return not self.eof

    async def read_head(self) -> bytes | None:
        while True:
            while self.buf[:2] == b"\r\n":  # tolerate stray CRLFs between requests
                del self.buf[:2]
            if self.buf[:1] and not self.buf[:1].isalpha():  # a TLS hello on the plain port, or junk
                raise _BadRequest(400, "not an HTTP request")  # as real servers do: at once, in plain text
            idx = self.buf.find(b"\r\n\r\n")
            if idx >= 0:
                head = bytes(self.buf[:idx])
                del self.buf[: idx + 4]
                return head
            if len(self.buf) > _MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            if self.eof:
                return None
            await self._wait_data()

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.eof:
                raise _BadRequest(400, "incomplete body")
            await self._wait_data()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_line(self) -> bytes:
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[: idx + 2]
                return line
            if self.eof:
                raise _BadRequest(400, "incomplete chunked body")
            if len(self.buf) > _MAX_HEAD:
                raise _BadRequest(400, "chunk line too long")
            await self._wait_data()

    async def read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = await self.read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while await self.read_line():  # trailers
                    pass
                return b"".join(parts)
            parts.append(await self.read_exact(size))
            if await self.read_exact(2) != b"\r\n":
                raise _BadRequest(400, "bad chunk terminator")

    async def write(self, data: bytes) -> bool:
        """Write and drain; False (and the peer marked gone) when the peer is gone."""
        if self.eof or self.transport.is_closing():
            self.peer_gone()
            return False
        self.transport.write(data)
        if self.paused:
            return await self.drain()
        return True

    def close(self) -> None:
        """Close our side after flushing what was written (FIN, not RST)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


class _Out:
    """Writes SSE text as chunked frames, applying the line-ending and split knobs."""

    def __init__(self, conn: _Conn, split: int, nl: str) -> None:
        self.conn = conn
        self.split = split
        self.nl = nl
        self.pos = 0  # body offset, for split

    async def events(self, events: list[str], head: bytes = b"", end: bool = False) -> bool:
        """Write ``events`` (one chunked frame each, in a single write unless split).

        ``head`` (the response head) goes first; ``end`` appends the zero chunk.
        """
        if self.nl != "\n":
            events = [e.replace("\n", self.nl) for e in events]
        if not self.split:
            frames = [head]
            for e in events:
                data = e.encode()
                frames.append(b"%x\r\n%b\r\n" % (len(data), data))
            if end:
                frames.append(b"0\r\n\r\n")
            return await self.conn.write(b"".join(frames))
        if head and not await self.conn.write(head):
            return False
        if not await self._split("".join(events).encode()):
            return False
        return await self.end() if end else True

    async def _split(self, data: bytes) -> bool:
        i = 0
        n = self.split
        while i < len(data):
            size = min(n - self.pos % n, len(data) - i)
            piece = data[i : i + size]
            i += size
            self.pos += size
            if not await self.conn.write(b"%x\r\n%b\r\n" % (size, piece)):
                return False
            await asyncio.sleep(0)
        return True

    async def end(self) -> bool:
        return await self.conn.write(b"0\r\n\r\n")


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class _Paced:
    """A paced stream driven by :class:`_Ticker`."""

    __slots__ = ("conn", "builder", "rec", "i", "upto", "pace_ms", "fut")

    def __init__(
        self, conn: _Conn, builder: _Builder, rec: dict[str, Any], i: int, upto: int, pace_ms: int, fut: asyncio.Future[int]
    ) -> None:
        self.conn = conn
        self.builder = builder
        self.rec = rec
        self.i = i
        self.upto = upto
        self.pace_ms = pace_ms
        self.fut = fut


class _Ticker:
    """Writes the deltas of many paced streams from one timer per millisecond.

    Waking one task per delta (``asyncio.sleep``) costs more than the write
    itself; here a bucket of streams due in the same millisecond is served by a
    single timer callback that writes straight to the transports.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.buckets: dict[int, list[_Paced]] = {}

    def run(self, conn: _Conn, builder: _Builder, rec: dict[str, Any], i: int, upto: int, pace_ms: int) -> asyncio.Future[int]:
        """Write deltas ``i..upto-1``, ``pace_ms`` apart (the first after ``pace_ms``).

        The future gives the next index (``upto`` when done, less when the transport
        buffer filled up and the caller should drain), or -1 when the peer is gone.
        """
        fut: asyncio.Future[int] = self.loop.create_future()
        now_ms = int(self.loop.time() * 1000)
        self._add(_Paced(conn, builder, rec, i, upto, pace_ms, fut), now_ms + pace_ms)
        return fut

    def _add(self, p: _Paced, when_ms: int) -> None:
        bucket = self.buckets.get(when_ms)
        if bucket is None:
            self.buckets[when_ms] = bucket = []
            self.loop.call_at(when_ms / 1000, self._fire, when_ms)
        bucket.append(p)

    def _fire(self, when_ms: int) -> None:
        for p in self.buckets.pop(when_ms, ()):
            fut = p.fut
            if fut.done():  # the waiting task was cancelled
                continue
            conn = p.conn
            transport = conn.transport
            if conn.eof or transport.is_closing():
                conn.peer_gone()
                fut.set_result(-1)
                continue
            try:
                transport.write(p.builder.delta_frame(p.i))
            except Exception:  # a broken transport must not stall the rest of the bucket
                conn.peer_gone()
                fut.set_result(-1)
                continue
            p.i += 1
            p.rec["tokens_sent"] = p.i
            if p.i >= p.upto or conn.paused:
                fut.set_result(p.i)
            else:
                self._add(p, when_ms + p.pace_ms)


class FakeUpstream:
    """The in-process server state and connection handler (see the module docstring)."""

    def __init__(self, key: str = "test-key", max_records: int = 100_000, anthropic_bearer: bool = False, label: str | None = None) -> None:
        self.key = key
        self.label = label
        self.anthropic_bearer = anthropic_bearer
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.seq = 0
        self.conn_seq = 0
        self.attempts: dict[str, int] = {}
        self.active: dict[str, int] = {}  # scenario id -> API requests being answered now
        self.peak: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.conns: set[_Conn] = set()
        self._ticker: _Ticker | None = None

    @property
    def ticker(self) -> _Ticker:
        if self._ticker is None:
            self._ticker = _Ticker()
        return self._ticker

    # -- connection loop -------------------------------------------------

    async def handle(self, conn: _Conn) -> None:
        """Serve the requests of one connection (keep-alive loop)."""
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.conns.add(conn)
        try:
            while not conn.eof:
                try:
                    req = await self._read_request(conn)
                except _BadRequest as exc:
                    await conn.write(self._json_response(exc.status, {"error": str(exc)}, False))
                    break
                if req is None:
                    break
                if not await self._dispatch(conn, req) or not req.keep_alive:
                    break
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection kill the server
            logging.getLogger("fake_upstream").exception("connection handler failed")
        finally:
            conn.active = None
            conn.close()
            self.conns.discard(conn)
            if task is not None:
                self.tasks.discard(task)

    async def _read_request(self, conn: _Conn) -> _Request | None:
        head = await conn.read_head()
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        raw = lines[1:]
        for line in raw:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "bad header line")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            if headers.get("expect", "").lower() == "100-continue":
                await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await conn.read_chunked()
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                raise _BadRequest(400, "bad content-length") from None
            if n and len(conn.buf) < n and headers.get("expect", "").lower() == "100-continue":
                await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await conn.read_exact(n)
        path, _, query = target.partition("?")
        return _Request(method, target, path, query, version, headers, raw, body, keep_alive)

    def _json_response(self, status: int, obj: Any, keep_alive: bool, extra: Iterable[tuple[str, str]] = ()) -> bytes:
        body = obj if isinstance(obj, bytes) else _dumps(obj).encode()
        return self._response(status, body, "application/json", keep_alive, extra)

    @staticmethod
    def _response(status: int, body: bytes, ctype: str, keep_alive: bool, extra: Iterable[tuple[str, str]] = ()) -> bytes:
        hdrs = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "keep-alive" if keep_alive else "close"),
            *extra,
        ]
        return _head(status, hdrs) + body

    async def _dispatch(self, conn: _Conn, req: _Request) -> bool:
        provider = API_PATHS.get(req.path)
        if provider is not None:
            if req.method != "POST":
                return await conn.write(self._json_response(405, error_body(provider, 405, "Method not allowed"), req.keep_alive))
            return await self._api(conn, req, provider)
        if req.path.startswith("/_fake/"):
            return await self._control(conn, req)
        return await conn.write(
            self._json_response(404, {"error": {"message": f"unknown path {req.path}", "type": "not_found"}}, req.keep_alive)
        )

    async def _control(self, conn: _Conn, req: _Request) -> bool:
        ka = req.keep_alive
        if req.path == "/_fake/health":
            return await conn.write(self._response(200, b"ok", "text/plain; charset=utf-8", ka))
        if req.path == "/_fake/reset" and req.method == "POST":
            self.records.clear()
            self.attempts.clear()
            self.peak.clear()
            return await conn.write(self._json_response(200, {"ok": True}, ka))
        if req.path == "/_fake/concurrency" and req.method == "GET":
            want = urllib.parse.parse_qs(req.query).get("id", [""])[0]
            return await conn.write(self._json_response(200, {"active": self.active.get(want, 0), "peak": self.peak.get(want, 0)}, ka))
        if req.path == "/_fake/requests" and req.method == "GET":
            params = urllib.parse.parse_qs(req.query)
            records: Iterable[dict[str, Any]] = self.records
            if "id" in params:
                want = params["id"][0]
                records = [r for r in records if r["id"] == want]
            return await conn.write(self._json_response(200, list(records), ka))
        return await conn.write(self._json_response(404, {"error": {"message": "unknown control path"}}, ka))

    # -- API requests ----------------------------------------------------

    def _auth_error(self, provider: str, headers: dict[str, str]) -> tuple[int, str] | None:
        if provider == ANTHROPIC:
            bearer_ok = self.anthropic_bearer and headers.get("authorization") == f"Bearer {self.key}"
            if headers.get("x-api-key") != self.key and not bearer_ok:
                return 401, "invalid x-api-key"
            if not headers.get("anthropic-version"):
                return 400, "anthropic-version: header is required"
            return None
        auth = headers.get("authorization", "")
        if auth != f"Bearer {self.key}":
            return 401, "Incorrect API key provided."
        return None

    async def _api(self, conn: _Conn, req: _Request, provider: str) -> bool:
        loop = conn.loop
        t0 = loop.time()
        self.seq += 1
        rec: dict[str, Any] = {
            "seq": self.seq,
            "id": None,
            "conn": conn.id,
            "path": req.path,
            "method": req.method,
            "headers": req.headers,
            "body": None,
            "stream": False,
            "attempt": None,
            "status": None,
            "tokens_sent": 0,
            "completed": False,
            "outcome": "pending",
            "client_closed": False,
            "closed_after_ms": None,
            "usage": None,
            "usage_sent": False,
        }
        self.records.append(rec)
        act = _Active(rec, t0)
        conn.active = act
        try:
            return await self._api_inner(conn, req, provider, rec, act)
        finally:
            act.finished = True
            if conn.active is act:
                conn.active = None
            if rec.get("concurrent") is not None:
                self.active[rec["id"]] -= 1

    async def _send_error(
        self,
        conn: _Conn,
        req: _Request,
        provider: str,
        rec: dict[str, Any],
        act: _Active,
        status: int,
        message: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
    ) -> bool:
        rec["status"] = status
        data = self._json_response(status, error_body(provider, status, message), req.keep_alive, extra)
        act.finished = True
        ok = await conn.write(data)
        if ok:
            rec["completed"] = True
            rec["outcome"] = "http_error"
        return ok

    async def _api_inner(self, conn: _Conn, req: _Request, provider: str, rec: dict[str, Any], act: _Active) -> bool:
        try:
            body = json.loads(req.body) if req.body else None
        except ValueError:
            rec["body"] = req.body.decode("utf-8", "replace")
            return await self._send_error(conn, req, provider, rec, act, 400, "request body is not valid JSON")
        rec["body"] = body
        if not isinstance(body, dict):
            return await self._send_error(conn, req, provider, rec, act, 400, "request body must be a JSON object")
        stream = body.get("stream") is True
        rec["stream"] = stream
        auth = self._auth_error(provider, req.headers)
        if auth is not None:
            return await self._send_error(conn, req, provider, rec, act, *auth)

        text = directive_text(provider, body)
        plan = parse_directives(text, self.label)
        rec["id"] = plan.id
        if plan.id is not None:  # counted until this handler returns (the answer written, or the peer gone)
            n = self.active[plan.id] = self.active.get(plan.id, 0) + 1
            self.peak[plan.id] = max(self.peak.get(plan.id, 0), n)
            rec["concurrent"] = n
        counter = plan.id if plan.id is not None else "\0" + text
        attempt = self.attempts.get(counter, 0)
        self.attempts[counter] = attempt + 1
        rec["attempt"] = attempt
        if plan.error_attempts is not None and attempt >= plan.error_attempts:
            plan.error_after = None  # the first error_attempts attempts only
        usage = _usage(provider, body, plan)
        rec["usage"] = usage

        if plan.garbage or plan.head == "truncated":
            rec["outcome"] = "dropped"
            act.finished = True
            await conn.write(
                b"SSH-2.0-OpenSSH_9.2p1\r\n" if plan.garbage else b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-enc"
            )
            conn.active = None
            conn.close()
            return False
        if plan.hang is not None:
            rec["outcome"] = "hung"
            await conn.wait_closed()
            return False
        if plan.headers_ms:
            await asyncio.sleep(plan.headers_ms / 1000)
            if conn.eof:
                return False

        status = plan.status[attempt] if attempt < len(plan.status) else 200
        if status != 200:
            extra = [("retry-after", plan.retry_after)] if plan.retry_after is not None else []
            message = None
            if plan.echo_headers:
                _, _, default = _OPENAI_ERRORS.get(status, ("", None, "Upstream error"))
                if provider == ANTHROPIC:
                    default = _ANTHROPIC_ERRORS.get(status, ("", "Upstream error"))[1]
                message = f"{default} Received headers: " + "\r\n".join(req.raw_headers)
            return await self._send_error(conn, req, provider, rec, act, status, message, extra)

        builder = _BUILDERS[provider](plan, body, usage)
        rid = ("request-id" if provider == ANTHROPIC else "x-request-id", f"req_{rec['seq']}")
        if not stream:
            rec["status"] = 200
            act.finished = True
            ok = await conn.write(self._json_response(200, builder.full_json(), req.keep_alive, [rid]))
            if ok:
                rec.update(completed=True, outcome="complete", usage_sent=True)
            return ok
        if plan.framing or plan.gzip:
            return await self._stream_encoded(conn, req, rec, act, plan, builder, rid)
        return await self._stream(conn, req, rec, act, plan, builder, rid)

    async def _stream_encoded(
        self, conn: _Conn, req: _Request, rec: dict[str, Any], act: _Active, plan: Plan, builder: _Builder, rid: tuple[str, str]
    ) -> bool:
        """A stream framed without chunking (``framing=``) or gzip-compressed (``gzip=1``)."""
        nl = "\r\n" if plan.crlf else ("\r" if plan.cr else "\n")
        pieces: list[tuple[int, str]] = [(0, "".join(builder.preamble()))]
        for i in range(plan.tokens):
            events = [builder.delta(i)] if i == 0 else [*builder.between(), builder.delta(i)]
            pieces.append((plan.first_ms if i == 0 else plan.pace_ms, "".join(events)))
        pieces.append((0, "".join(builder.closing())))
        data = [p.replace("\n", nl).encode() for _, p in pieces]
        if plan.gzip:
            import zlib

            z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            data = [z.compress(d) + z.flush(zlib.Z_SYNC_FLUSH) for d in data]
            data[-1] += z.flush(zlib.Z_FINISH)
        headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), rid]
        if plan.gzip:
            headers.append(("content-encoding", "gzip"))
        chunked = plan.framing is None
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        elif plan.framing == "length":
            headers.append(("content-length", str(sum(len(d) for d in data))))
        keep_alive = req.keep_alive and plan.framing != "close"
        headers.append(("connection", "keep-alive" if keep_alive else "close"))
        rec["status"] = 200
        if not await conn.write(_head(200, headers)):
            return False
        for n, ((delay, _), piece) in enumerate(zip(pieces, data, strict=False)):
            if delay:
                await asyncio.sleep(delay / 1000)
                if conn.eof:
                    return False
            if not await conn.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece):
                return False
            if 0 < n <= plan.tokens:
                rec["tokens_sent"] = n
        if chunked and not await conn.write(b"0\r\n\r\n"):
            return False
        act.finished = True
        rec.update(completed=True, outcome="complete", usage_sent=builder.reports_usage)
        if not keep_alive:
            conn.active = None
            conn.close()
            return False
        return True

    async def _stream(
        self, conn: _Conn, req: _Request, rec: dict[str, Any], act: _Active, plan: Plan, builder: _Builder, rid: tuple[str, str]
    ) -> bool:
        nl = "\r\n" if plan.crlf else ("\r" if plan.cr else "\n")
        out = _Out(conn, plan.split, nl)
        head = _head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache"),
                ("connection", "keep-alive" if req.keep_alive else "close"),
                rid,
            ],
        )
        rec["status"] = 200
        if not await out.events(builder.preamble(), head=head):
            return False

        n = plan.tokens
        # the first interruption (smallest K) wins; ties: drop, hang, error
        stop_k, stop_kind = n + 1, ""
        for kind, k in (("drop", plan.drop_after), ("hang", plan.hang_after), ("error", plan.error_after)):
            if k is not None and min(k, n) < stop_k:
                stop_k, stop_kind = min(k, n), kind
        plain = nl == "\n" and not plan.split and not plan.ping and not plan.unknown
        upto = min(n, stop_k)

        async def wait(i: int) -> bool:
            """The delay before delta (or interruption) number ``i``."""
            delay = plan.first_ms if i == 0 else plan.pace_ms
            if delay:
                await asyncio.sleep(delay / 1000)
            return not conn.eof

        i = 0
        while i < upto:
            if plain and i > 0 and plan.pace_ms:
                # hot path: the shared ticker writes the paced deltas without waking this task
                i = await self.ticker.run(conn, builder, rec, i, upto, plan.pace_ms)
                if i < 0:
                    return False
                if i < upto and not await conn.drain():  # handed back: transport buffer full
                    return False
                continue
            if not await wait(i):
                return False
            if plain:
                ok = await conn.write(builder.delta_frame(i))
            elif i:
                ok = await out.events([*builder.between(), builder.delta(i)])
            else:
                ok = await out.events([builder.delta(i)])
            if not ok:
                return False
            i += 1
            rec["tokens_sent"] = i
        if stop_k <= n and not await wait(stop_k):
            return False

        if stop_kind == "drop":
            act.finished = True
            rec["outcome"] = "dropped"
            conn.active = None
            conn.close()
            return False
        if stop_kind == "hang":
            rec["outcome"] = "hung"
            await conn.wait_closed()
            return False
        if stop_kind == "error":
            act.finished = True
            echo = "Received headers: " + "\r\n".join(req.raw_headers) if plan.echo_headers else None
            if not await out.events([builder.error_event(echo)], end=True):
                return False
            rec.update(completed=True, outcome="error_event")
            return True

        act.finished = True
        if not await out.events(builder.closing(), end=True):
            return False
        rec.update(completed=True, outcome="complete", usage_sent=builder.reports_usage)
        return True


async def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    key: str = "test-key",
    ssl_context: ssl.SSLContext | None = None,
    backlog: int = 4096,
    max_records: int = 100_000,
    anthropic_bearer: bool = False,
    label: str | None = None,
) -> tuple[asyncio.AbstractServer, FakeUpstream]:
    """Start the fake inside the running event loop; returns ``(server, state)``."""
    state = FakeUpstream(key=key, max_records=max_records, anthropic_bearer=anthropic_bearer, label=label)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(state), host, port, ssl=ssl_context, backlog=backlog)
    return server, state


def _raise_nofile_limit() -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ValueError, OSError):
        pass


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, ssl.SSLError, OSError, asyncio.CancelledError)):
        return
    loop.default_exception_handler(context)


async def _amain(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_exception_handler)
    ctx = None
    if args.certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.certfile, args.keyfile)
        if args.client_ca:  # mutual TLS: a client must show a certificate this file vouches for
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
    server, state = await start_server(
        args.host,
        args.port,
        key=args.key,
        ssl_context=ctx,
        backlog=args.backlog,
        max_records=args.max_records,
        anthropic_bearer=args.anthropic_bearer,
        label=args.label,
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for conn in list(state.conns):
        conn.transport.abort()
    for task in list(state.tasks):
        task.cancel()
    if state.tasks:
        await asyncio.wait(list(state.tasks), timeout=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Anthropic/OpenAI streaming upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--client-ca", help="with --certfile: require client certificates signed by (or equal to) this PEM")
    parser.add_argument("--key", default="test-key", help="the API key expected (default test-key)")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--max-records", type=int, default=100_000)
    parser.add_argument("--label", help="this server's label: prompt words name@LABEL=value apply to it only")
    parser.add_argument("--anthropic-bearer", action="store_true", help="also accept 'Authorization: Bearer <key>' on /v1/messages")
    args = parser.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _raise_nofile_limit()
    try:
        asyncio.run(_amain(args))
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------
# Subprocess wrapper for tests
# --------------------------------------------------------------------------


def make_certificate(cert: str, key: str, subject: str = "/CN=127.0.0.1", san: str | None = "IP:127.0.0.1,DNS:localhost") -> None:
    """A self-signed certificate and its key for tests (the openssl CLI): a TLS server's with
    ``san``, or a client's with ``san=None``."""
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", subject]
    subprocess.run(cmd + extra, check=True, capture_output=True)


class FakeUpstreamProcess:
    """Runs this file as a subprocess; a context manager.

    ``tls=(certfile, keyfile)`` serves HTTPS; control calls then verify with
    ``cafile`` (default: ``certfile``, fine for a self-signed certificate).
    ``client_cert=(certfile, keyfile)`` (a self-signed one) makes it require that client
    certificate (mutual TLS).
    """

    def __init__(
        self,
        tls: tuple[str, str] | None = None,
        key: str = "test-key",
        cafile: str | None = None,
        host: str = "127.0.0.1",
        extra_args: Iterable[str] = (),
        start_timeout: float = 10.0,
        client_cert: tuple[str, str] | None = None,
        label: str | None = None,
    ) -> None:
        self.tls = tls
        self.label = label
        self.key = key
        self.host = host
        self.cafile = cafile or (tls[0] if tls else None)
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int = 0
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        self.client_cert = client_cert  # mutual TLS: clients (the control calls too) must show it
        if tls:
            ctx = ssl.create_default_context(cafile=self.cafile)
            if client_cert:
                ctx.load_cert_chain(*client_cert)
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> FakeUpstreamProcess:
        cmd = [sys.executable, os.path.abspath(__file__), "--port", "0", "--host", self.host, "--key", self.key]
        if self.tls:
            cmd += ["--certfile", self.tls[0], "--keyfile", self.tls[1]]
            if self.client_cert:
                cmd += ["--client-ca", self.client_cert[0]]
        if self.label:
            cmd += ["--label", self.label]
        cmd += self.extra_args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise RuntimeError("fake upstream did not print its PORT line in time")
                if not sel.select(remaining):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait()
                    raise RuntimeError(f"fake upstream exited with status {code} before listening")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"unexpected first line from fake upstream: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None

    def __enter__(self) -> FakeUpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.base_url + path, method=method, data=b"" if method == "POST" else None)
        with self._opener.open(req, timeout=10) as resp:
            return resp.read()

    def requests(self, id: str | None = None) -> list[dict[str, Any]]:
        """The request log (optionally only records with this scenario id)."""
        path = "/_fake/requests" + (f"?{urllib.parse.urlencode({'id': id})}" if id is not None else "")
        return json.loads(self._call("GET", path))

    def reset(self) -> None:
        """Clear the request log, the attempt counters and the concurrency peaks."""
        self._call("POST", "/_fake/reset")

    def concurrency(self, id: str) -> dict[str, int]:
        """``{"active": n, "peak": m}`` for the requests with this scenario id."""
        return json.loads(self._call("GET", f"/_fake/concurrency?{urllib.parse.urlencode({'id': id})}"))

    def health(self) -> bool:
        return self._call("GET", "/_fake/health") == b"ok"

    def wait_for_request(
        self, id: str | None, predicate: Callable[[dict[str, Any]], bool] = lambda r: True, timeout: float = 5.0, interval: float = 0.02
    ) -> dict[str, Any]:
        """Poll the log until a record with this id satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            for rec in reversed(self.requests(id)):
                if predicate(rec):
                    return rec
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request with id={id!r} matched within {timeout}s: {self.requests(id)!r}")
            time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
