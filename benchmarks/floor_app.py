"""The floor for one gunicorn gevent worker: relay raw upstream socket reads, parse nothing.

No Flask, no validation, no SSE decoding or encoding, no accounting: what is left is the cost of
gunicorn + gevent itself to wake a greenlet, read a socket and write a chunk. ``floor.py`` runs
the capacity scenario against it, so the proxy's own numbers can be read against it.
"""
import json
import os
import socket

UPSTREAM_PORT = int(os.environ["UPSTREAM_PORT"])
KEY = os.environ.get("UPSTREAM_KEY", "bench-key")


def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    text = json.loads(body)["messages"][0]["content"]
    upstream = json.dumps({"model": "claude-x", "messages": [{"role": "user", "content": text}], "max_tokens": 1000, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", UPSTREAM_PORT))
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: upstream\r\nx-api-key: %s\r\nanthropic-version: 2023-06-01\r\n"
        b"content-type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(upstream), upstream)
    )
    start_response("200 OK", [("Content-Type", "text/event-stream")])

    def relay():
        try:
            while True:
                data = sock.recv(65536)
                if data:
                    yield data
                if not data or data.endswith(b"0\r\n\r\n"):
                    return
        finally:
            sock.close()

    return relay()
