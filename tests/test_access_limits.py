"""Request rate limits and token quotas (issue 3, "quotas"), on real gunicorn + real Redis.

The properties a deployment relies on: the (N+1)-th request of one identity in the window is a
contract-shaped 429 that costs no upstream call; counting is exact across workers and instances
sharing one Redis; token quotas are charged with the upstream's real counts (also for a browser
that left mid-stream) and refuse before the upstream is called; a Redis outage is a fast 503
(fail closed) or a logged, served request (fail open), never a 500 or a hang.
"""

from __future__ import annotations

import http.client as httpclient
import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from conftest import (
    GunicornServer,
    chat_body,
    free_port,
    http,
    make_jwt,
    mock_host_app,
    open_raw_stream,
    sse_events,
    start_servers,
    stop_servers,
    uid,
)
from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse

from flask_llm_proxy import LLMProxy

FLEET_LIMIT = 20
FLEET_QUOTA = 500


# --- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(upstream: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GunicornServer]]:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    fleet = {
        "LLM_PROXY_REQUIRE_AUTH": True,
        "LLM_PROXY_RATE_LIMIT": f"{FLEET_LIMIT}/minute",
        "LLM_PROXY_TOKEN_QUOTA": f"{FLEET_QUOTA}/day",
        "RATELIMIT_STORAGE_URI": redis_server.url,
    }
    down = {"LLM_PROXY_RATE_LIMIT": "5/minute", "LLM_PROXY_TOKEN_QUOTA": "100000/day", "RATELIMIT_STORAGE_URI": dead_redis}
    specs = {
        # no auth required: identities are client addresses, or the JWT subject when a token is sent
        "limit5": (
            1,
            {
                "LLM_PROXY_RATE_LIMIT": "5/minute",
                "RATELIMIT_STORAGE_URI": redis_server.url,
                "LLM_PROXY_CORS_ORIGINS": ["https://app.example.com"],
            },
        ),
        "fleet_a": (3, fleet),
        "fleet_b": (3, fleet),
        "down_closed": (1, {**down, "LLM_PROXY_FAIL_OPEN": False}),
        "down_open": (1, {**down, "LLM_PROXY_FAIL_OPEN": True}),
    }
    started = start_servers(upstream.base_url, tmp_path_factory.mktemp("access-limits"), specs)
    yield started
    stop_servers(started.values())


def bearer(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_jwt(sub)}"}


def post(server: GunicornServer, provider: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 20) -> Any:
    return http().post(f"{server.url}/api/{provider}", json=body, headers=headers or {}, stream=True, timeout=timeout)


def mock_body() -> dict[str, Any]:
    return chat_body("hello", model="mock-1", stream=False)


def assert_contract_error(resp: Any, status: int, type_: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"] and isinstance(body.get("type"), str), body
    if type_ is not None:
        assert body["type"] == type_, body
    return body


_source_ips = (f"127.1.{a}.{b}" for a, b in itertools.product(range(1, 250), range(2, 250)))


def raw_request(
    server: GunicornServer, method: str, path: str, *, source_ip: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    """A request from a chosen loopback source address (all of 127/8 is local): a distinct client."""
    conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=15, source_address=(source_ip, 0))
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={**({"Content-Type": "application/json"} if data else {}), **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- one identity, 5/minute -------------------------------------------------------------------


def test_sixth_request_in_the_window_is_a_429_with_rate_headers_and_no_upstream_call(servers: Any, upstream: Any) -> None:
    server, headers = servers["limit5"], bearer(uid("rl-six"))
    before = int(time.time())
    for k in range(5):
        rid = uid("rl-ok")
        with post(server, "anthropic", chat_body(f"id={rid} tokens=1"), headers) as r:
            assert r.status_code == 200, r.text
            assert sse_events(r)[-1] == "[DONE]"
            assert r.headers["X-RateLimit-Limit"] == "5"
            assert r.headers["X-RateLimit-Remaining"] == str(4 - k)
    rid = uid("rl-refused")
    with post(server, "anthropic", chat_body(f"id={rid} tokens=1"), headers) as r:
        body = assert_contract_error(r, 429, "rate_limited")
        retry_after = int(r.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == "0"
        reset = int(r.headers["X-RateLimit-Reset"])
        assert before <= reset <= int(time.time()) + 61
        assert "5" in body["error"]
    assert upstream.requests(id=rid) == []


def test_other_identities_are_not_affected_by_one_identity_s_limit(servers: Any, upstream: Any) -> None:
    server = servers["limit5"]
    spent, fresh = bearer(uid("rl-spent")), bearer(uid("rl-fresh"))
    statuses = [post(server, "mock", mock_body(), spent).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    r = post(server, "mock", mock_body(), fresh)
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "4"
    # and a different client address is a different identity too
    ip_a, ip_b = next(_source_ips), next(_source_ips)
    assert [raw_request(server, "POST", "/api/mock", source_ip=ip_a, headers={}, body=mock_body())[0] for _ in range(6)] == [200] * 5 + [
        429
    ]
    assert raw_request(server, "POST", "/api/mock", source_ip=ip_b, headers={}, body=mock_body())[0] == 200
    assert post(server, "mock", mock_body(), spent).status_code == 429


def test_preflight_options_requests_are_not_counted(servers: Any) -> None:
    server, ip = servers["limit5"], next(_source_ips)
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for _ in range(8):
        status, headers, _ = raw_request(server, "OPTIONS", "/api/mock", source_ip=ip, headers=preflight)
        assert status < 400 and "x-ratelimit-limit" not in headers
        assert headers.get("access-control-allow-origin") == "https://app.example.com"  # a real CORS preflight, answered
    statuses = [raw_request(server, "POST", "/api/mock", source_ip=ip, headers={}, body=mock_body())[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]


def test_requests_refused_for_bad_credentials_are_not_counted(servers: Any) -> None:
    server, ip = servers["limit5"], next(_source_ips)
    for _ in range(6):
        status, _, _ = raw_request(
            server, "POST", "/api/mock", source_ip=ip, headers={"Authorization": "Bearer not-a-token"}, body=mock_body()
        )
        assert status == 401
    statuses = [raw_request(server, "POST", "/api/mock", source_ip=ip, headers={}, body=mock_body())[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]


def test_an_empty_rate_limit_setting_disables_rate_limiting(proxy: Any) -> None:
    # the shared proxy runs with LLM_PROXY_RATE_LIMIT = "" (conftest.base_env)
    for _ in range(15):
        r = post(proxy, "mock", mock_body())
        assert r.status_code == 200
        assert "X-RateLimit-Limit" not in r.headers and "Retry-After" not in r.headers


# --- the fleet: two instances x 3 workers sharing one Redis -----------------------------------


def test_rate_limit_is_exact_across_two_instances_with_three_workers_each(servers: Any) -> None:
    a, b = servers["fleet_a"], servers["fleet_b"]
    headers = bearer(uid("fleet-rl"))

    def one(i: int) -> tuple[int, dict[str, Any]]:
        r = post(a if i % 2 else b, "mock", mock_body(), headers, timeout=30)
        return r.status_code, r.json()

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(4 * FLEET_LIMIT)))
    counts = Counter(status for status, _ in results)
    assert counts == {200: FLEET_LIMIT, 429: 3 * FLEET_LIMIT}, counts
    assert all(body["type"] == "rate_limited" for status, body in results if status == 429)


def quota_spent(redis_url: str, identity: str) -> int:
    """Tokens charged to an identity's quota, read from the shared Redis itself."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*llm_proxy_tokens/{identity}/*"))
        return sum(int(client.get(k) or 0) for k in keys)
    finally:
        client.close()


def test_token_quota_is_charged_the_upstream_s_real_counts_across_instances_then_refuses(
    servers: Any, upstream: Any, redis_server: Any
) -> None:
    a, b = servers["fleet_a"], servers["fleet_b"]
    sub = uid("quota")
    headers = bearer(sub)
    spent = lambda: quota_spent(redis_server.url, sub)  # noqa: E731

    # the fake upstream reports input = the prompt's word count (5 words here), output = tokens
    with post(a, "anthropic", chat_body(f"id={uid('q1')} tokens=60 one two three"), headers) as r:
        assert r.status_code == 200, r.text
        last = sse_events(r)[-2]
    assert (last["usage"]["inputTokens"], last["usage"]["outputTokens"]) == (5, 60)
    wait_until(lambda: spent() == 65 or None, what="65 tokens charged")

    r = post(b, "openai", chat_body(f"id={uid('q2')} input_tokens=50 tokens=100", model="gpt-4o", stream=False), headers)
    assert r.status_code == 200 and r.json()["usage"]["totalTokens"] == 150
    wait_until(lambda: spent() == 215 or None, what="215 tokens charged")

    # 215 < 500: allowed, and charged in full even though it overruns the quota
    with post(a, "anthropic", chat_body(f"id={uid('q3')} input_tokens=235 tokens=120"), headers) as r:
        assert r.status_code == 200
        sse_events(r)
    wait_until(lambda: spent() == 570 or None, what="570 tokens charged")

    for server in (b, a):
        rid = uid("q-refused")
        with post(server, "anthropic", chat_body(f"id={rid}"), headers) as r:
            body = assert_contract_error(r, 429, "quota_exceeded")
            assert int(r.headers["Retry-After"]) >= 1
            assert body["code"] == "QUOTA_EXCEEDED"
        assert upstream.requests(id=rid) == [], "a spent quota must not cost an upstream call"
    assert spent() == 570

    # another identity still has its whole quota
    other = uid("quota-other")
    r = post(b, "openai", chat_body(f"id={uid('q-other')} input_tokens=5 tokens=5", model="gpt-4o", stream=False), bearer(other))
    assert r.status_code == 200


def test_a_client_that_leaves_mid_stream_is_charged_what_was_streamed(servers: Any, upstream: Any, redis_server: Any) -> None:
    server = servers["fleet_a"]
    sub = uid("quota-cut")
    rid = uid("quota-cut")
    sock, got = open_raw_stream(
        server.url,
        "/api/anthropic",
        chat_body(f"id={rid} input_tokens=30 tokens=500 pace_ms=20"),
        headers=bearer(sub),
        until=b'"tokenId":9}',
    )
    sock.close()
    rec = upstream.wait_for_request(rid, lambda r: r["client_closed"], timeout=5)
    assert not rec["completed"]
    charged = wait_until(lambda: quota_spent(redis_server.url, sub), what="the cut stream to be charged")
    time.sleep(0.2)
    assert quota_spent(redis_server.url, sub) == charged, "charged more than once"
    # input as the upstream reported it at message_start, output at least what the client saw
    assert 30 + 10 <= charged <= 30 + rec["tokens_sent"], (charged, rec["tokens_sent"])


# --- Redis down -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider,model", [("anthropic", "claude-3-5-sonnet-20241022"), ("mock", "mock-1")])
def test_redis_down_and_fail_closed_is_a_fast_contract_503_with_no_upstream_call(
    servers: Any, upstream: Any, provider: str, model: str
) -> None:
    server = servers["down_closed"]
    rids = [uid("down-closed") for _ in range(4)]

    def one(rid: str) -> tuple[int, float, Any]:
        start = time.monotonic()
        r = post(server, provider, chat_body(f"id={rid}", model=model), timeout=30)
        return r.status_code, time.monotonic() - start, r

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, rids))
    for _status, elapsed, r in results:
        assert elapsed < 5, f"took {elapsed:.1f}s"
        assert_contract_error(r, 503)
        assert r.headers.get("Retry-After")
    for rid in rids:
        assert upstream.requests(id=rid) == []


def test_redis_down_and_fail_open_serves_the_request_and_logs_it_as_unmetered(servers: Any, upstream: Any) -> None:
    server = servers["down_open"]
    rid = uid("down-open")
    start = time.monotonic()
    with post(server, "anthropic", chat_body(f"id={rid} tokens=3"), timeout=30) as r:
        assert r.status_code == 200, r.text
        assert sse_events(r)[-1] == "[DONE]"
    assert time.monotonic() - start < 5
    assert len(upstream.requests(id=rid)) == 1
    wait_until(lambda: "unmetered" in server.log(), what="a log line saying the request was unmetered")


def test_redis_that_accepts_but_never_answers_is_a_503_within_seconds() -> None:
    """A hung Redis (connection accepted, no reply) must not hang the request either."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        app = Flask(__name__)
        app.config.update(
            LLM_PROXY_PROVIDERS={"mock": {"type": "mock", "models": ["*"], "pace_ms": 0}},
            LLM_PROXY_REQUIRE_AUTH=False,
            LLM_PROXY_RATE_LIMIT="5/minute",
            LLM_PROXY_USAGE_STORE="none",
            RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{listener.getsockname()[1]}/0",
        )
        LLMProxy(app)
        start = time.monotonic()
        r = app.test_client().post("/api/mock", json=mock_body())
        assert time.monotonic() - start < 5
        assert r.status_code == 503 and r.is_json and r.get_json()["type"]
    finally:
        listener.close()


# --- in-process: a host's own Limiter ---------------------------------------------------------


@pytest.mark.parametrize("order", ["limiter-first", "limiter-init-app-later"])
def test_a_host_limiter_passed_to_the_extension_does_the_counting(order: str) -> None:
    app = mock_host_app(LLM_PROXY_RATE_LIMIT="3/minute")
    if order == "limiter-first":
        my_limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", default_limits=[])
        LLMProxy(app, limiter=my_limiter)
    else:
        my_limiter = Limiter(get_remote_address, storage_uri="memory://", default_limits=[])
        LLMProxy(app, limiter=my_limiter)
        my_limiter.init_app(app)

    @app.get("/host-route")
    @my_limiter.limit("1/minute")
    def host_route() -> str:
        return "ok"

    client = app.test_client()
    assert app.extensions["llm_proxy"].limiter is my_limiter
    statuses = []
    for _ in range(4):
        r = client.post("/api/mock", json=mock_body())
        statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 429]
    assert r.get_json()["type"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    assert r.headers["X-RateLimit-Limit"] == "3" and r.headers["X-RateLimit-Remaining"] == "0"
    # the counts live in the host's limiter storage
    _, remaining = my_limiter.limiter.get_window_stats(parse("3/minute"), "llm_proxy_requests", "ip:127.0.0.1")
    assert remaining == 0
    # the host's own limits keep working beside the proxy's
    assert [client.get("/host-route").status_code for _ in range(2)] == [200, 429]


def test_the_proxy_s_own_limiter_does_not_apply_a_host_default_limit_to_every_route() -> None:
    """A host's RATELIMIT_DEFAULT / RATELIMIT_APPLICATION belong to the host's limiter. The
    extension's own limiter only stores the proxy's counts: through it they would become one bucket
    that every user of every route shares."""
    app = mock_host_app(
        LLM_PROXY_RATE_LIMIT="50/minute", RATELIMIT_DEFAULT="2/minute", RATELIMIT_APPLICATION="3/minute", RATELIMIT_STORAGE_URI="memory://"
    )
    LLMProxy(app)

    @app.get("/host-route")
    def host_route() -> str:
        return "ok"

    client = app.test_client()
    hosts = [client.get("/host-route", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code for i in range(4)]
    proxied = [client.post("/api/mock", json=mock_body(), environ_base={"REMOTE_ADDR": f"10.0.1.{i}"}).status_code for i in range(4)]
    assert hosts == [200] * 4 and proxied == [200] * 4


def test_the_proxy_s_own_limiter_adds_no_request_hooks_to_the_host_app() -> None:
    """flask-limiter hooks a check, a header step and a teardown into every request of the app it
    is initialised on. The proxy's own limiter counts without them, so the host's requests (the
    proxy's included) do not pay for them; its counts still live in the host's RATELIMIT_* storage."""
    app = mock_host_app(LLM_PROXY_RATE_LIMIT="2/minute", RATELIMIT_STORAGE_URI="memory://", RATELIMIT_KEY_PREFIX="host-a")
    registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    before = [list(registry.get(None, ())) for registry in registries]  # the app-wide hooks, copied
    LLMProxy(app)
    assert [list(registry.get(None, ())) for registry in registries] == before
    assert "limiter" not in app.extensions
    limiter = app.extensions["llm_proxy"].limiter
    client = app.test_client()
    assert [client.post("/api/mock", json=mock_body()).status_code for _ in range(3)] == [200, 200, 429]
    assert limiter.storage.get("LIMITER/host-a/llm_proxy_requests/ip:127.0.0.1/2/1/minute") == 3  # the refused one too


@pytest.mark.parametrize("passed", [False, True], ids=["own-limiter", "host-limiter"])
def test_ratelimit_enabled_false_switches_the_proxys_limits_off_and_says_so(passed: bool, caplog: Any) -> None:
    """flask-limiter's switch for every limit of the app (``RATELIMIT_ENABLED = False``, common in a
    host's tests) switches the proxy's rate limit and token quota off too, with a warning, rather
    than leaving them without a storage to count in (every request a 503)."""
    app = mock_host_app(LLM_PROXY_RATE_LIMIT="1/minute", LLM_PROXY_TOKEN_QUOTA="1/day", RATELIMIT_ENABLED=False)
    with caplog.at_level("WARNING", logger="flask_llm_proxy"):
        LLMProxy(app, limiter=Limiter(get_remote_address, app=app, default_limits=[]) if passed else None)
    assert "RATELIMIT_ENABLED is False" in caplog.text and "LLM_PROXY_RATE_LIMIT" in caplog.text
    client = app.test_client()
    responses = [client.post("/api/mock", json=mock_body()) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200], responses[-1].text
    assert "X-RateLimit-Limit" not in responses[0].headers


def test_a_host_limiter_also_carries_the_token_quota() -> None:
    app = mock_host_app(LLM_PROXY_RATE_LIMIT="", LLM_PROXY_TOKEN_QUOTA="20/day")
    my_limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", default_limits=[])
    LLMProxy(app, limiter=my_limiter)
    client = app.test_client()
    # mock usage: input = prompt characters // 4 ("hello": 1 token) + 5 output tokens
    used = []
    for _ in range(4):
        r = client.post("/api/mock", json=mock_body())
        assert r.status_code == 200
        used.append(r.get_json()["usage"]["totalTokens"])
    assert used == [6, 6, 6, 6]
    r = client.post("/api/mock", json=mock_body())
    assert r.status_code == 429 and r.get_json()["type"] == "quota_exceeded"
    _, remaining = my_limiter.limiter.get_window_stats(parse("20/day"), "llm_proxy_tokens", "ip:127.0.0.1")
    assert remaining == 0


# --- how the counting is done: every strategy, key prefixes, a window another worker opened -------


def rate_headers(resp: Any) -> tuple[int, int, int]:
    return resp.status_code, int(resp.headers["X-RateLimit-Remaining"]), int(resp.headers["X-RateLimit-Reset"])


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_rate_headers_tell_what_is_left_and_when_it_resets_whatever_the_strategy(strategy: str) -> None:
    app = mock_host_app(LLM_PROXY_RATE_LIMIT="3/minute", RATELIMIT_STORAGE_URI="memory://", RATELIMIT_STRATEGY=strategy)
    LLMProxy(app)
    client = app.test_client()
    sliding_counter = strategy == "sliding-window-counter"
    if sliding_counter and 60 - time.time() % 60 < 5:
        time.sleep(60 - time.time() % 60 + 0.1)  # its windows are the clock's minutes: keep the test inside one
    first = time.time()
    seen = [rate_headers(client.post("/api/mock", json=mock_body())) for _ in range(3)]
    assert [(status, left) for status, left, _ in seen] == [(200, 2), (200, 1), (200, 0)]
    # When a slot frees up. Fixed and moving window: one period after the first request. The
    # sliding window counter (limits) counts per clock minute and weighs the previous minute's
    # count by how much of it still overlaps the last 60 s: a slot frees when the minute ends.
    frees_at = (first // 60 + 1) * 60 if sliding_counter else first + 60
    assert [reset for _, _, reset in seen] == pytest.approx([frees_at] * 3, abs=2), (first, seen)
    refused_at = time.time()
    r = client.post("/api/mock", json=mock_body())
    assert r.status_code == 429 and r.get_json()["type"] == "rate_limited"
    assert int(r.headers["X-RateLimit-Reset"]) == pytest.approx(frees_at, abs=2)
    assert int(r.headers["Retry-After"]) == pytest.approx(frees_at - refused_at, abs=2)


def test_two_apps_with_different_key_prefixes_keep_separate_counts_on_one_redis(redis_server: Any) -> None:
    clients = {}
    for name in ("a", "b"):
        app = mock_host_app(LLM_PROXY_RATE_LIMIT="2/minute", RATELIMIT_STORAGE_URI=redis_server.url, RATELIMIT_KEY_PREFIX=uid(name))
        LLMProxy(app)
        clients[name] = app.test_client()
    assert [clients["a"].post("/api/mock", json=mock_body()).status_code for _ in range(3)] == [200, 200, 429]
    r = clients["b"].post("/api/mock", json=mock_body())
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "1"  # not app a's count


def test_a_window_another_worker_opened_reports_that_window_s_reset(redis_server: Any) -> None:
    """Two apps on one Redis stand for two workers: the second learns the window's end from Redis."""
    prefix = uid("fleet")
    workers = []
    for _ in range(2):
        app = mock_host_app(LLM_PROXY_RATE_LIMIT="3/minute", RATELIMIT_STORAGE_URI=redis_server.url, RATELIMIT_KEY_PREFIX=prefix)
        LLMProxy(app)
        workers.append(app.test_client())
    _, left, opened_reset = rate_headers(workers[0].post("/api/mock", json=mock_body()))
    assert left == 2
    time.sleep(1.5)  # a worker that guessed "one period from now" would be 1-2 s late
    _, left, reset = rate_headers(workers[1].post("/api/mock", json=mock_body()))
    assert left == 1
    assert abs(reset - opened_reset) <= 1
    _, left, reset = rate_headers(workers[0].post("/api/mock", json=mock_body()))
    assert left == 0 and abs(reset - opened_reset) <= 1
    r = workers[1].post("/api/mock", json=mock_body())
    assert r.status_code == 429
    assert abs(int(r.headers["X-RateLimit-Reset"]) - opened_reset) <= 1
    assert abs(int(r.headers["Retry-After"]) - (opened_reset - time.time())) <= 2


def test_on_redis_the_rate_count_and_the_quota_reading_share_one_round_trip(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fleet settings cost per request: one round trip before the upstream call (count + quota
    reading, pipelined) and one after it (the quota charge), not three."""
    app = mock_host_app(
        LLM_PROXY_RATE_LIMIT="100/minute",
        LLM_PROXY_TOKEN_QUOTA="100000/day",
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_KEY_PREFIX=uid("one-trip"),
    )
    LLMProxy(app)
    client = app.test_client()
    assert client.post("/api/mock", json=mock_body()).status_code == 200  # loads the counting script
    trips: list[str] = []
    single, piped = redis.Redis.execute_command, redis.client.Pipeline.execute
    monkeypatch.setattr(redis.Redis, "execute_command", lambda self, *a, **k: trips.append(str(a[0])) or single(self, *a, **k))
    monkeypatch.setattr(redis.client.Pipeline, "execute", lambda self, *a, **k: trips.append("pipeline") or piped(self, *a, **k))
    r = client.post("/api/mock", json=mock_body())
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "98"
    assert trips == ["pipeline", "EVALSHA"]  # count + quota reading, then the charge
    # the reading decides: a spent quota is refused (its window's end is then read for Retry-After)
    key = "LIMITS:" + parse("100000/day").key_for(app.config["RATELIMIT_KEY_PREFIX"], "llm_proxy_tokens", "ip:127.0.0.1")
    redis.Redis.from_url(redis_server.url).set(key, 100000)
    trips.clear()
    r = client.post("/api/mock", json=mock_body())
    assert r.status_code == 429 and r.get_json()["type"] == "quota_exceeded"
    assert trips[0] == "pipeline" and 1 <= int(r.headers["Retry-After"]) <= 86400


def test_a_request_refused_by_one_rate_limit_is_not_counted_in_the_next(redis_server: Any) -> None:
    """Several windows, with a quota on the same Redis: counted in order, stopping at the refusal."""
    app = mock_host_app(
        LLM_PROXY_RATE_LIMIT="2/minute;100/day",
        LLM_PROXY_TOKEN_QUOTA="100000/day",
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_KEY_PREFIX=uid("windows"),
    )
    LLMProxy(app)
    client = app.test_client()
    assert [client.post("/api/mock", json=mock_body()).status_code for _ in range(5)] == [200, 200, 429, 429, 429]
    day = "LIMITS:" + parse("100/day").key_for(app.config["RATELIMIT_KEY_PREFIX"], "llm_proxy_requests", "ip:127.0.0.1")
    assert int(redis.Redis.from_url(redis_server.url).get(day)) == 2  # the refused three used none of the day


def test_a_flushed_redis_script_cache_neither_fails_nor_double_counts(redis_server: Any) -> None:
    app = mock_host_app(
        LLM_PROXY_RATE_LIMIT="10/minute",
        LLM_PROXY_TOKEN_QUOTA="100000/day",
        LLM_PROXY_FAIL_OPEN=False,
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_KEY_PREFIX=uid("flushed"),
    )
    LLMProxy(app)
    client = app.test_client()
    assert client.post("/api/mock", json=mock_body()).headers["X-RateLimit-Remaining"] == "9"
    redis.Redis.from_url(redis_server.url).script_flush()  # a restarted or failed-over server
    r = client.post("/api/mock", json=mock_body())
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "8"
    assert client.post("/api/mock", json=mock_body()).headers["X-RateLimit-Remaining"] == "7"
