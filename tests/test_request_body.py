"""Reading the request body (flask_llm_proxy/web/json_body.py): bounded, and fair to the host app.

The proxy reads the body through werkzeug, cached: a host hook that read the body first leaves it
to the proxy, the body is still there for the host after the proxy read it, a server that hands
the body over in pieces is read to the end, and a body shorter than declared is a 400, not a hang
or a 500.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from conftest import mock_host_app
from flask import Flask, g, request

from flask_llm_proxy import LLMProxy

BODY = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}).encode()


def make_app() -> Flask:
    app = mock_host_app(tokens=3, LLM_PROXY_RATE_LIMIT=None)
    LLMProxy(app)
    return app


def tokens(data: bytes) -> list[str]:
    events = [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: {")]
    return [e["token"] for e in events if not e.get("isLast")]


class Trickle(io.RawIOBase):
    """A server's input that hands over at most 7 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self._data.read(min(len(buf), 7))
        buf[: len(data)] = data
        return len(data)


def call(app: Flask, wsgi_input: Any, length: int | str, **extra: Any) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/mock",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": wsgi_input,
        "wsgi.errors": io.StringIO(),
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(length),
        "REMOTE_ADDR": "127.0.0.1",
        **extra,
    }
    status: list[str] = []
    body = app.wsgi_app(environ, lambda s, h, e=None: status.append(s))  # type: ignore[arg-type]
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return status[0], data


def test_a_body_is_read_and_streamed() -> None:
    resp = make_app().test_client().post("/api/mock", data=BODY, content_type="application/json")
    assert resp.status_code == 200
    assert len(tokens(resp.data)) == 3


def test_a_host_hook_that_read_the_body_first_leaves_it_to_the_proxy() -> None:
    app = make_app()

    @app.before_request
    def peek() -> None:
        g.host_saw = request.get_json(silent=True)

    resp = app.test_client().post("/api/mock", data=BODY, content_type="application/json")
    assert resp.status_code == 200, resp.data
    assert len(tokens(resp.data)) == 3


def test_the_body_is_still_there_for_the_host_after_the_proxy_read_it() -> None:
    app = make_app()
    seen: list[bytes] = []

    @app.after_request
    def audit(response: Any) -> Any:
        seen.append(request.get_data())
        return response

    resp = app.test_client().post("/api/mock", data=BODY, content_type="application/json")
    assert resp.status_code == 200
    assert seen == [BODY]


def test_a_body_handed_over_in_pieces_is_read_to_the_end() -> None:
    status, data = call(make_app(), Trickle(BODY), len(BODY))
    assert status.startswith("200"), data
    assert len(tokens(data)) == 3


def test_a_body_shorter_than_declared_is_a_400_that_says_so() -> None:
    status, data = call(make_app(), io.BytesIO(BODY[:-5]), len(BODY))
    assert status.startswith("400"), data
    assert "ended before its declared Content-Length" in json.loads(data)["error"]


def test_an_odd_content_length_header_is_never_a_500() -> None:
    """Servers that pass the header through (gunicorn refuses these itself)."""
    for header in ("\u00b2", "9" * 5000, "+12", " 12"):
        status, data = call(make_app(), io.BytesIO(BODY), header)
        assert not status.startswith("5"), (header[:10], status, data)


def test_a_chunked_body_that_also_declares_a_length_is_read_whole() -> None:
    """Transfer-Encoding wins over Content-Length (RFC 9112 6.3); werkzeug's dev server passes both."""
    status, data = call(make_app(), io.BytesIO(BODY), 5, HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input_terminated": True})
    assert status.startswith("200"), data
    assert len(tokens(data)) == 3


@pytest.mark.parametrize(
    "content_type", ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
def test_a_body_a_browser_may_send_cross_site_without_a_preflight_is_refused(content_type: str) -> None:
    """text/plain, forms and an untyped body are what another site can make its visitors' browsers
    POST without a CORS preflight; refused, no page elsewhere can spend this proxy's budget."""
    status, data = call(make_app(), io.BytesIO(BODY), len(BODY), CONTENT_TYPE=content_type)
    assert status.startswith("415")
    err = json.loads(data)
    assert err["type"] == "unsupported_media_type" and "Content-Type: application/json" in err["error"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"]
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    status, data = call(make_app(), io.BytesIO(BODY), len(BODY), CONTENT_TYPE=content_type)
    assert status.startswith("200") and len(tokens(data)) == 3
