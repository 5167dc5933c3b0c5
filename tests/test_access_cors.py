"""CORS for browser clients (issue 3): only the configured origins, on every answer.

A browser page on an allowed origin must be able to preflight ``POST`` with ``Authorization`` and
``Content-Type``, read the rate-limit headers, and read the proxy's 401/429 bodies (else it sees an
opaque network error instead of "log in again" or "retry in 20 s"). Any other origin gets no
``Access-Control-Allow-Origin`` at all, and a proxy without configured origins sends no CORS
headers whatsoever.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import JWT_SECRET, GunicornServer, base_env, chat_body, http, make_jwt, sse_events, uid
from flask import Flask
from flask_jwt_extended import JWTManager

from flask_llm_proxy import ConfigError, LLMProxy

ORIGINS = ["https://app.example.com", "https://.*\\.example\\.org"]
RATE_HEADERS = {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"}


@pytest.fixture(scope="module")
def cors_server(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    env = base_env(
        upstream.base_url,
        tmp_path_factory.mktemp("access-cors"),
        LLM_PROXY_CORS_ORIGINS=ORIGINS,
        LLM_PROXY_REQUIRE_AUTH=True,
        LLM_PROXY_RATE_LIMIT="2/minute",
    )
    server = GunicornServer(env, workers=1, name="cors")
    yield server
    server.stop()


def preflight(server: GunicornServer, origin: str, path: str = "/api/anthropic", headers: str = "Authorization, Content-Type") -> Any:
    return http().options(
        f"{server.url}{path}",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
        timeout=10,
    )


def listed(value: str | None) -> set[str]:
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def cors_headers(resp: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


@pytest.mark.parametrize(
    "origin", ["https://app.example.com", "https://chat.example.org", "https://a.b.example.org", "HTTPS://APP.EXAMPLE.COM"]
)
def test_preflight_from_an_allowed_origin_allows_post_with_authorization_and_content_type(cors_server: Any, origin: str) -> None:
    r = preflight(cors_server, origin)
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "post" in listed(r.headers.get("Access-Control-Allow-Methods"))
    assert {"authorization", "content-type"} <= listed(r.headers.get("Access-Control-Allow-Headers"))
    assert "origin" in listed(r.headers.get("Vary"))
    assert int(r.headers["Access-Control-Max-Age"]) == 600
    assert "Access-Control-Allow-Credentials" not in r.headers  # LLM_PROXY_CORS_CREDENTIALS is off


@pytest.mark.parametrize("path", ["/api/models", "/api/health", "/api/openai"])
def test_preflight_covers_every_proxy_endpoint(cors_server: Any, path: str) -> None:
    r = preflight(cors_server, "https://chat.example.org", path=path, headers="Authorization")
    assert r.headers.get("Access-Control-Allow-Origin") == "https://chat.example.org"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.net",
        "http://app.example.com",  # other scheme
        "https://app.example.com.evil.net",  # literal origins are not prefixes
        "https://app.example.com:8443",  # other port
        "https://example.org",  # the pattern wants a subdomain
        "null",
    ],
)
def test_a_disallowed_origin_gets_no_allow_origin_header(cors_server: Any, upstream: Any, origin: str) -> None:
    r = preflight(cors_server, origin)
    assert "Access-Control-Allow-Origin" not in r.headers, r.headers
    assert "Access-Control-Allow-Headers" not in r.headers
    rid = uid("cors-denied")
    with http().post(
        f"{cors_server.url}/api/anthropic",
        json=chat_body(f"id={rid} tokens=1"),
        headers={"Origin": origin, "Authorization": f"Bearer {make_jwt(uid('cors-denied'))}"},
        stream=True,
        timeout=20,
    ) as r:
        sse_events(r)  # CORS is enforced by the browser; the server only withholds the header
        assert "Access-Control-Allow-Origin" not in r.headers, r.headers


@pytest.mark.parametrize("origin", ["https://chat.example.org.attacker.net", "https://x.example.org-attacker.net"])
def test_a_regex_origin_must_match_the_whole_origin_not_a_prefix(cors_server: Any, origin: str) -> None:
    r = preflight(cors_server, origin)
    assert "Access-Control-Allow-Origin" not in r.headers, f"hostile origin {origin} was allowed: {cors_headers(r)}"


def test_responses_expose_the_rate_limit_headers_and_retry_after_to_the_page(cors_server: Any, upstream: Any) -> None:
    origin = "https://app.example.com"
    with http().post(
        f"{cors_server.url}/api/anthropic",
        json=chat_body(f"id={uid('cors-ok')} tokens=2"),
        headers={"Origin": origin, "Authorization": f"Bearer {make_jwt(uid('cors-ok'))}"},
        stream=True,
        timeout=20,
    ) as r:
        assert r.status_code == 200
        assert sse_events(r)[-1] == "[DONE]"
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert RATE_HEADERS <= listed(r.headers.get("Access-Control-Expose-Headers")), r.headers
        assert "x-ratelimit-limit" in {k.lower() for k in r.headers}


def test_a_401_carries_cors_headers_so_the_page_can_read_it(cors_server: Any, upstream: Any) -> None:
    origin = "https://chat.example.org"
    rid = uid("cors-401")
    r = http().post(f"{cors_server.url}/api/anthropic", json=chat_body(f"id={rid}"), headers={"Origin": origin}, timeout=20)
    assert r.status_code == 401 and r.json()["type"] == "authentication_error"
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "origin" in listed(r.headers.get("Vary"))
    r = http().get(f"{cors_server.url}/api/models", headers={"Origin": origin, "Authorization": "Bearer expired.or.bad"}, timeout=10)
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == origin
    assert upstream.requests(id=rid) == []


def test_a_429_carries_cors_headers_and_exposes_retry_after(cors_server: Any) -> None:
    origin = "https://app.example.com"
    headers = {"Origin": origin, "Authorization": f"Bearer {make_jwt(uid('cors-429'))}"}
    body = chat_body("hello", model="mock-1", stream=False)
    statuses = [http().post(f"{cors_server.url}/api/mock", json=body, headers=headers, timeout=10) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    r = statuses[-1]
    assert r.json()["type"] == "rate_limited"
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "retry-after" in listed(r.headers.get("Access-Control-Expose-Headers"))
    assert r.headers["Retry-After"]


def test_without_configured_origins_there_are_no_cors_headers_at_all(proxy: Any) -> None:
    # the shared proxy has no LLM_PROXY_CORS_ORIGINS
    for origin in ("https://app.example.com", "https://evil.example.net"):
        r = http().options(
            f"{proxy.url}/api/anthropic",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Content-Type",
            },
            timeout=10,
        )
        assert cors_headers(r) == {}, r.headers
        r = http().post(f"{proxy.url}/api/mock", json=chat_body("hi", model="mock-1", stream=False), headers={"Origin": origin}, timeout=10)
        assert r.status_code == 200 and cors_headers(r) == {}, r.headers
        r = http().get(f"{proxy.url}/api/models", headers={"Origin": origin}, timeout=10)
        assert cors_headers(r) == {}, r.headers


# --- in-process: configuration ------------------------------------------------------------------


def cors_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        LLM_PROXY_PROVIDERS={"mock": {"type": "mock", "models": ["*"], "pace_ms": 0}},
        LLM_PROXY_RATE_LIMIT="",
        JWT_SECRET_KEY=JWT_SECRET,
        LLM_PROXY_USAGE_STORE="none",
        **config,
    )
    JWTManager(app)
    return app


@pytest.mark.parametrize("origins", [["*"], "*", ["https://app.example.com", "*"], [".*"]])
def test_any_origin_together_with_credentials_is_refused_at_init(origins: Any) -> None:
    app = cors_app(LLM_PROXY_CORS_ORIGINS=origins, LLM_PROXY_CORS_CREDENTIALS=True)
    with pytest.raises(ConfigError) as info:
        LLMProxy(app)
    assert info.value.key == "LLM_PROXY_CORS_ORIGINS"


def test_credentials_with_listed_origins_are_allowed_and_announced() -> None:
    app = cors_app(LLM_PROXY_CORS_ORIGINS=["https://app.example.com"], LLM_PROXY_CORS_CREDENTIALS=True)
    LLMProxy(app)
    r = app.test_client().options(
        "/api/mock",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    r = app.test_client().options("/api/mock", headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers and "Access-Control-Allow-Credentials" not in r.headers


def test_cors_on_the_proxy_does_not_leak_onto_the_host_s_own_routes() -> None:
    app = cors_app(LLM_PROXY_CORS_ORIGINS=["https://app.example.com"])

    @app.get("/account")
    def account() -> str:
        return "private"

    LLMProxy(app)
    r = app.test_client().get("/account", headers={"Origin": "https://app.example.com"})
    assert cors_headers(r) == {}
