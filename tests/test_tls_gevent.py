"""HTTPS upstreams under gunicorn + gevent, with and without --preload.

This is where gevent + requests + gunicorn break in production (FIELD-NOTES: with --preload,
urllib3 is imported before the worker patches ``ssl``). The shipped gunicorn.conf.py patches
first; a bare ``-k gevent --preload`` is detected, repaired, and named in one log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import API_KEY, chat_body, http, sse_events
from fake_upstream import FakeUpstreamProcess, expected_text, make_certificate


def _stream_ok(server: Any) -> None:
    for provider, model in (("anthropic", "claude-3-5-haiku-latest"), ("openai", "gpt-4o")):
        with http().post(f"{server.url}/api/{provider}", json=chat_body("tokens=6 split=5", model=model), stream=True, timeout=20) as r:
            assert r.status_code == 200, r.text
            events = sse_events(r)
        assert "".join(e["token"] for e in events if isinstance(e, dict)) == expected_text(6)
        assert events[-1] == "[DONE]"


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_https_upstream_streams_with_the_shipped_gunicorn_conf(start_proxy: Any, tls_upstream: Any, tls_cert: Any, preload: bool) -> None:
    server = start_proxy(tls_upstream.base_url, preload=preload, REQUESTS_CA_BUNDLE=tls_cert[0])
    _stream_ok(server)
    assert "Traceback" not in server.log() and "MonkeyPatchWarning" not in server.log()


def test_bare_gevent_preload_is_repaired_and_named_in_one_log_line(start_proxy: Any, tls_upstream: Any, tls_cert: Any) -> None:
    server = start_proxy(tls_upstream.base_url, preload=True, conf=False, REQUESTS_CA_BUNDLE=tls_cert[0])
    _stream_ok(server)
    _stream_ok(server)
    log = server.log()
    assert "Traceback" not in log and "RecursionError:" not in log
    assert log.count("monkey.patch_all()' on the first line of gunicorn.conf.py") == 1


def test_an_untrusted_certificate_is_a_clear_network_error(start_proxy: Any, tls_upstream: Any) -> None:
    server = start_proxy(tls_upstream.base_url)  # no REQUESTS_CA_BUNDLE: the self-signed cert is not trusted
    r = http().post(f"{server.url}/api/anthropic", json=chat_body("tokens=2"), timeout=20)
    assert r.status_code == 502
    assert r.json()["type"] == "network_error" and "TLS" in r.json()["error"]


def test_tls_connections_to_the_upstream_are_kept_alive(start_proxy: Any, tls_upstream: Any, tls_cert: Any) -> None:
    server = start_proxy(tls_upstream.base_url, REQUESTS_CA_BUNDLE=tls_cert[0])
    for i in range(3):
        with http().post(f"{server.url}/api/anthropic", json=chat_body(f"id=tls-reuse-{i} tokens=2"), stream=True, timeout=20) as r:
            assert sse_events(r)[-1] == "[DONE]"
    conns = {tls_upstream.requests(id=f"tls-reuse-{i}")[0]["conn"] for i in range(3)}
    assert len(conns) == 1, conns  # no new TLS handshake per request


@pytest.fixture(scope="module")
def tls_proxy(tls_upstream: Any, tls_cert: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from conftest import GunicornServer, base_env

    server = GunicornServer(
        base_env(tls_upstream.base_url, tmp_path_factory.mktemp("tls-proxy"), REQUESTS_CA_BUNDLE=tls_cert[0]), workers=1
    )
    yield server
    server.stop()


def test_a_paced_stream_over_tls_arrives_whole(tls_proxy: Any) -> None:
    """A paced stream over TLS: each record read as it arrives."""
    with http().post(f"{tls_proxy.url}/api/anthropic", json=chat_body("tokens=12 pace_ms=30"), stream=True, timeout=20) as r:
        events = sse_events(r)
    assert "".join(e["token"] for e in events if isinstance(e, dict)) == expected_text(12)
    assert events[-1] == "[DONE]"


def test_a_paced_tls_stream_that_goes_silent_gets_keepalives_then_a_timeout(tls_proxy: Any) -> None:
    with http().post(
        f"{tls_proxy.url}/api/openai", json=chat_body("tokens=10 pace_ms=40 hang_after=5", model="gpt-4o"), stream=True, timeout=20
    ) as r:
        raw = r.raw.read()
    assert raw.count(b": ping\n\n") >= 2  # every 0.5 s during the 2 s of silence
    assert raw.rstrip().splitlines()[-1].startswith(b"error: ") and b'"TIMEOUT"' in raw.rstrip().splitlines()[-1]


def test_a_burst_over_tls_is_written_in_a_few_writes_not_one_per_record(tls_proxy: Any) -> None:
    """A TLS read returns one record, one event each: the events read while the reader did not
    have to wait are handed over as one batch (body.UpstreamBody), so a burst costs a few writes,
    as over plain HTTP, instead of one write per token."""
    tokens = 300
    with http().post(f"{tls_proxy.url}/api/anthropic", json=chat_body(f"tokens={tokens}"), stream=True, timeout=20) as r:
        frames = list(r.raw.read_chunked(decode_content=False))
    text = b"".join(frames).decode()
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == tokens + 2  # every token, the final event, [DONE]
    assert len(frames) <= tokens // 2, f"{len(frames)} writes for {tokens} tokens"  # one per record: 301


# --- a provider's own TLS settings: verify and cert ---------------------------------------------


def _provider_env(base_url: str, **tls: Any) -> dict[str, Any]:
    return {
        "anthropic": {"api_key": API_KEY, "base_url": base_url, "models": ["claude-*"], **tls},
        "openai": {"api_key": API_KEY, "base_url": base_url + "/v1", "models": ["gpt-4o"], **tls},
    }


def test_a_providers_own_ca_bundle_is_trusted_without_the_environment(start_proxy: Any, tls_upstream: Any, tls_cert: Any) -> None:
    server = start_proxy(tls_upstream.base_url, LLM_PROXY_PROVIDERS=_provider_env(tls_upstream.base_url, verify=tls_cert[0]))
    _stream_ok(server)


def test_verify_false_works_for_a_self_signed_server_and_says_so_loudly(start_proxy: Any, tls_upstream: Any) -> None:
    server = start_proxy(tls_upstream.base_url, LLM_PROXY_PROVIDERS=_provider_env(tls_upstream.base_url, verify=False))
    _stream_ok(server)
    assert "verify is False" in server.log() and "NOT checked" in server.log()


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:

    d = tmp_path_factory.mktemp("mtls")
    cert, key = d / "client.pem", d / "client.key"
    make_certificate(str(cert), str(key), subject="/CN=llm-proxy-client", san=None)
    return str(cert), str(key)


def test_a_client_certificate_opens_a_mutual_tls_upstream(start_proxy: Any, tls_cert: Any, client_cert: Any) -> None:
    with FakeUpstreamProcess(key=API_KEY, tls=tls_cert, client_cert=client_cert) as mtls:
        without = start_proxy(mtls.base_url, LLM_PROXY_PROVIDERS=_provider_env(mtls.base_url, verify=tls_cert[0]))
        r = http().post(f"{without.url}/api/anthropic", json=chat_body("tokens=2"), timeout=20)
        assert r.status_code == 502 and API_KEY not in r.text  # no certificate: the handshake fails
        server = start_proxy(mtls.base_url, LLM_PROXY_PROVIDERS=_provider_env(mtls.base_url, verify=tls_cert[0], cert=list(client_cert)))
        _stream_ok(server)
