"""An outbound HTTP proxy between the server and the providers, from the environment.

Many companies let servers reach the internet only through a proxy. The upstream path is
``requests``, so ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` work as they do for any
``requests`` user (docs/providers.rst). These run the example app under gunicorn + gevent with
those variables set and a real proxy (tests/forward_proxy.py) in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import API_KEY, chat_body, free_port, http, sse_events
from fake_upstream import expected_text
from forward_proxy import ForwardProxy

#: a NO_PROXY that matches nothing here: the runner's own (often "localhost,127.0.0.1") must not
#: send the loopback upstream around the proxy these tests put in between
NOTHING = "proxy-test.invalid"


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as proxy:
        yield proxy


def _behind_https_proxy(start_proxy: Any, tls_upstream: Any, tls_cert: Any, proxy_url: str, **settings: Any) -> Any:
    """The example app, its HTTPS upstream trusted, its calls through ``HTTPS_PROXY=proxy_url``."""
    return start_proxy(
        tls_upstream.base_url,
        REQUESTS_CA_BUNDLE=tls_cert[0],
        HTTPS_PROXY=proxy_url,
        NO_PROXY=NOTHING,
        no_proxy=NOTHING,
        **settings,
    )


def _streams_whole(server: Any, prompt: str = "tokens=6 split=5") -> None:
    for provider, model in (("anthropic", "claude-3-5-haiku-latest"), ("openai", "gpt-4o")):
        with http().post(f"{server.url}/api/{provider}", json=chat_body(prompt, model=model), stream=True, timeout=20) as r:
            assert r.status_code == 200, r.text
            events = sse_events(r)
        assert "".join(e["token"] for e in events if isinstance(e, dict)) == expected_text(6)
        assert events[-1] == "[DONE]"


def test_an_https_upstream_is_reached_through_HTTPS_PROXY_by_a_tunnel(
    start_proxy: Any, tls_upstream: Any, tls_cert: Any, forward_proxy: ForwardProxy
) -> None:
    server = _behind_https_proxy(start_proxy, tls_upstream, tls_cert, forward_proxy.url)
    _streams_whole(server, "tokens=6 pace_ms=20")
    # a CONNECT tunnel: TLS runs end to end, the proxy never sees the request, its key or the answer
    host = tls_upstream.base_url.split("//", 1)[1]
    assert forward_proxy.seen and all(seen == ("CONNECT", host) for seen in forward_proxy.seen), forward_proxy.seen
    assert len(tls_upstream.requests()) >= 2


def test_a_plain_http_upstream_is_reached_through_HTTP_PROXY_by_forwarded_requests(
    start_proxy: Any, upstream: Any, forward_proxy: ForwardProxy
) -> None:
    server = start_proxy(upstream.base_url, HTTP_PROXY=forward_proxy.url, NO_PROXY=NOTHING, no_proxy=NOTHING)
    _streams_whole(server)
    assert ("POST", upstream.base_url + "/v1/messages") in forward_proxy.seen
    assert ("POST", upstream.base_url + "/v1/chat/completions") in forward_proxy.seen


def test_NO_PROXY_sends_a_listed_upstream_around_the_proxy(start_proxy: Any, upstream: Any, forward_proxy: ForwardProxy) -> None:
    server = start_proxy(upstream.base_url, HTTP_PROXY=forward_proxy.url, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    _streams_whole(server)
    assert forward_proxy.seen == []


def test_a_proxy_that_refuses_is_retried_then_a_502_network_error_naming_the_proxy(
    start_proxy: Any, tls_upstream: Any, tls_cert: Any
) -> None:
    with ForwardProxy(refuse=True) as refusing:
        server = _behind_https_proxy(start_proxy, tls_upstream, tls_cert, refusing.url, LLM_PROXY_MAX_RETRIES=1)
        r = http().post(f"{server.url}/api/anthropic", json=chat_body("id=refused-by-proxy tokens=2"), timeout=20)
        attempts = list(refusing.seen)
    assert r.status_code == 502, r.text
    assert r.json()["type"] == "network_error" and "HTTP proxy" in r.json()["error"]
    assert len(attempts) == 2 and all(method == "CONNECT" for method, _ in attempts), attempts  # retried once
    assert API_KEY not in r.text and API_KEY not in server.log()
    assert tls_upstream.requests(id="refused-by-proxy") == []  # nothing went around the proxy


def test_a_proxy_that_is_down_is_a_502_network_error_naming_the_proxy(start_proxy: Any, tls_upstream: Any, tls_cert: Any) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    server = _behind_https_proxy(start_proxy, tls_upstream, tls_cert, nothing_listens, LLM_PROXY_MAX_RETRIES=0)
    r = http().post(f"{server.url}/api/anthropic", json=chat_body("tokens=2"), timeout=20)
    assert r.status_code == 502, r.text
    assert r.json()["type"] == "network_error" and "HTTP proxy" in r.json()["error"]
    assert API_KEY not in r.text and API_KEY not in server.log()
