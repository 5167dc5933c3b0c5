"""What the proxy assumes of its libraries beyond their documented API (flask_llm_proxy/_compat.py
and the reading of bodies in flask_llm_proxy/body.py). Each test names the assumption: when an
upgrade breaks one, it fails here, loudly, before a user sees it in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests

from flask_llm_proxy import _compat


def test_requests_iter_lines_reads_the_body_through_raw_stream_with_decoding() -> None:
    """body.PromptRaw works because iter_content reads ``raw.stream(chunk_size, decode_content=True)``."""
    calls: list[tuple[Any, Any]] = []

    class Raw:
        def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
            calls.append((amt, decode_content))
            yield b"data: 1\r"
            yield b"\n\r\n"

    resp = requests.Response()
    resp.raw = Raw()
    assert list(resp.iter_lines(chunk_size=None)) == [b"data: 1", b"", b""]  # the CRLF trap, as documented
    assert calls == [(None, True)]


def test_urllib3_responses_read_as_they_arrive_and_can_be_shut_down_from_another_thread() -> None:
    import urllib3

    assert callable(getattr(urllib3.HTTPResponse, "read1", None))  # urllib3 >= 2.0
    assert callable(getattr(urllib3.HTTPResponse, "shutdown", None))  # urllib3 >= 2.3


def test_urllib3_keeps_the_sslcontext_class_it_imported_where_ssl_patch_problem_repoints_it() -> None:
    import ssl

    import urllib3.util.ssl_ as u3ssl

    assert isinstance(u3ssl.SSLContext, type) and issubclass(u3ssl.SSLContext, ssl.SSLContext)
    assert callable(u3ssl.create_urllib3_context)
    assert _compat.ssl_patch_problem() is None  # not patched in this process: nothing to do


def test_limiter_key_prefix_is_the_limiters_own() -> None:
    from flask import Flask
    from flask_limiter import Limiter

    assert _compat.limiter_key_prefix(Limiter(key_func=lambda: "k", key_prefix="acme", storage_uri="memory://")) == "acme"
    app = Flask("compat")
    app.config.update(RATELIMIT_KEY_PREFIX="from-config", RATELIMIT_STORAGE_URI="memory://")
    limiter = Limiter(key_func=lambda: "k", app=app)
    assert _compat.limiter_key_prefix(limiter) == "from-config"


def test_redis_incr_and_get_counts_and_reads_in_one_round_trip(redis_server: Any) -> None:
    from limits.storage import MemoryStorage, RedisStorage

    storage = RedisStorage(redis_server.url)
    storage.incr("compat-warm", 60)  # loads the Lua script, as the first public count does
    storage.incr("compat-quota", 60, amount=42)
    assert _compat.redis_incr_and_get(storage, "compat-rate", 60, ["compat-quota", "compat-none"]) == (1, [42, 0])
    assert _compat.redis_incr_and_get(storage, "compat-rate", 60, []) == (2, [])
    assert storage.get("compat-rate") == 2 and 0 < storage.get_expiry("compat-rate")  # limits sees our count
    storage.get_connection().script_flush()
    assert _compat.redis_incr_and_get(storage, "compat-rate", 60, []) is None  # not loaded: the caller counts publicly
    assert storage.get("compat-rate") == 2
    assert _compat.redis_incr_and_get(MemoryStorage(), "x", 60, []) is None


def test_this_test_process_is_not_gevent_patched_so_unit_tests_read_bodies_on_threads() -> None:
    assert _compat.gevent_active() is False


def test_gunicorn_hands_the_client_socket_to_the_app_as_gunicorn_socket() -> None:
    """watch_client_close peeks at ``environ["gunicorn.socket"]`` (set by gunicorn.http.wsgi)."""
    import inspect

    from gunicorn.http import wsgi

    assert '"gunicorn.socket": sock' in inspect.getsource(wsgi.default_environ)


def test_watch_client_close_sees_the_client_leave_and_not_data_it_sends() -> None:
    """Run in a gevent-patched child process, as in a gunicorn gevent worker."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import socket, gevent
        from flask_llm_proxy._compat import watch_client_close
        for close in (True, False):
            a, b = socket.socketpair()
            seen = []
            cancel = watch_client_close({"gunicorn.socket": a}, lambda: seen.append("gone"))
            gevent.sleep(0.05)
            if close:
                b.close()
            else:
                b.sendall(b"GET / HTTP/1.1")  # more from the client: no verdict
            gevent.sleep(0.1)
            cancel()
            print(close, seen)
        assert watch_client_close({}, lambda: None) is None
    """)
    from conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["True ['gone']", "False []"]


def test_take_read_timeout_moves_a_streamed_responses_timeout_off_its_socket_and_urllib3_sets_it_again(upstream: Any) -> None:
    """body.UpstreamBody watches silence itself: ``HTTPResponse.connection.sock`` is the socket,
    and urllib3 gives the pooled connection its timeout back for the next request."""
    from conftest import API_KEY, chat_body

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    url = f"{upstream.base_url}/v1/chat/completions"
    body = {**chat_body("tokens=3", model="gpt-4o"), "stream": True}
    with session.post(url, json=body, stream=True, timeout=(3, 7)) as resp:
        sock = resp.raw.connection.sock
        assert sock.gettimeout() == 7
        assert _compat.take_read_timeout(resp) == 7
        assert sock.gettimeout() is None
        assert b"[DONE]" in resp.raw.read()
    with session.post(url, json=body, stream=True, timeout=(3, 5)) as resp:
        assert resp.raw.connection.sock is sock  # the same pooled connection...
        assert sock.gettimeout() == 5  # ...with its timeout set again
    mocked = requests.Response()
    mocked.raw = object()
    assert _compat.take_read_timeout(mocked) is None  # no socket: nothing to take


def test_a_pooled_upstream_connection_is_checked_with_the_kernels_poll_under_gevent() -> None:
    """urllib3 asks ``is_connected`` of a pooled connection before reusing it; the adapter's pools
    answer with ``readable_now``: the original ``poll``, not gevent's stand-in, and the same
    answers (idle: connected; the upstream closed it or sent something unasked: dropped)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import socket, time
        from gevent.monkey import get_original
        from flask_llm_proxy import _compat
        from flask_llm_proxy.upstream.client import ProxyAdapter
        a, b = socket.socketpair()
        print(_compat.readable_now(a), end=" ")
        b.sendall(b"x")
        print(_compat.readable_now(a), end=" ")
        print(_compat._POLL is get_original("select", "poll"))
        pools = ProxyAdapter(4).poolmanager.pool_classes_by_scheme
        server = socket.create_server(("127.0.0.1", 0))
        conn = pools["http"].ConnectionCls("127.0.0.1", server.getsockname()[1])
        conn.connect()
        peer, _ = server.accept()
        print(conn.is_connected, end=" ")
        peer.close()
        time.sleep(0.05)
        import urllib3.connection as uc
        tls = pools["https"].ConnectionCls
        print(conn.is_connected, issubclass(tls, uc.HTTPSConnection) and tls.is_connected is not uc.HTTPSConnection.is_connected)
    """)
    from conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["False True True", "True False True"]


def test_a_wakeup_under_gevent_wakes_its_waiter_once_and_drops_a_set_with_nobody_waiting() -> None:
    """The stream's greenlet waits for its reader with a hub ``Waiter`` (``make_wakeup``): a set
    while it waits wakes it at the hub's next turn, several sets wake it once, and a set before it
    waits is dropped (it checks for work first), as ``clear()`` then ``wait()`` expects."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import gevent
        from flask_llm_proxy import _compat
        w = _compat.make_wakeup()
        print(type(w).__name__, end=" ")
        woken = []
        def waiter():
            w.clear()
            w.wait()
            woken.append(1)
        g = gevent.spawn(waiter)
        gevent.sleep(0)  # it waits now
        w.set(); w.set()
        g.join(timeout=2)
        print(woken, end=" ")
        w.set()  # nobody waits: dropped
        late = gevent.spawn(waiter)
        late.join(timeout=0.2)
        print(late.dead, woken)
    """)
    from conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "_GeventWakeup [1] False [1]"
