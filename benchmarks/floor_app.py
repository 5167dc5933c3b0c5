"""The floor for one gunicorn gevent worker: relay raw upstream socket reads, parse nothing.

No Flask, no validation, no SSE decoding or encoding, no accounting: what is left is the cost of
gunicorn + gevent itself to wake a greenlet, read a socket and write a chunk. Upstream connections
are kept alive and reused, as the proxy does. The upstream's bytes (status line, headers, chunk
framing) are relayed as they are; the load generator only counts the events in them. ``run.py``'s
capacity scenario and ``floor.py`` run it, so the proxy's own numbers can be read against it.

``flask_app`` is the same relay as a Flask view (request context, dispatch, response object, no
extension): the latency scenario runs both, so the proxy's added TTFB splits into what gunicorn +
gevent cost, what Flask adds, and what is the proxy's own work.
"""

import json
import os
import socket

UPSTREAM_PORT = int(os.environ["UPSTREAM_PORT"])
KEY = os.environ.get("UPSTREAM_KEY", "bench-key")
IDLE: list = []  # kept-alive upstream connections


def _connect() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # an IP: no resolver thread
    sock.connect(("127.0.0.1", UPSTREAM_PORT))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def app(environ, start_response):
    if environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    text = json.loads(body)["messages"][0]["content"]
    upstream = json.dumps(
        {"model": "claude-x", "messages": [{"role": "user", "content": text}], "max_tokens": 1000, "stream": True}
    ).encode()
    sock = IDLE.pop() if IDLE else _connect()
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: upstream\r\nx-api-key: %s\r\nanthropic-version: 2023-06-01\r\n"
        b"content-type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(upstream), upstream)
    )
    start_response("200 OK", [("Content-Type", "text/event-stream")])

    def relay():
        done = False
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                yield data
                if data.endswith(b"0\r\n\r\n"):
                    done = True
                    return
        finally:
            IDLE.append(sock) if done else sock.close()

    return relay()


def _flask_app():
    from flask import Flask, Response, request

    flask = Flask("floor_app")

    @flask.post("/")
    def relay():  # noqa: ANN202
        head: list = []
        body = app(request.environ, lambda status, headers: head.append(status))
        return Response(body, status=200, content_type="text/event-stream", direct_passthrough=True)

    @flask.get("/health")
    def health():  # noqa: ANN202
        return "ok"

    return flask


flask_app = _flask_app()
