"""Who may use the proxy, and who the proxy thinks is asking (issue 3, "Access control").

Real gunicorn (gevent workers) in front of the fake upstream. With ``LLM_PROXY_REQUIRE_AUTH`` every
bad credential is a 401 in the contract's error shape (never flask-jwt-extended's 422 ``{"msg"}``)
and costs no upstream call; without auth the identity is the peer address, and a client cannot
pick another one by forging ``X-Forwarded-For`` unless the deployment says how many proxies to trust.
Identity is observed the way an operator would: through rate-limit buckets and the per-request
JSON log line.
"""

from __future__ import annotations

import http.client as httpclient
import itertools
import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import API_KEY, JWT_SECRET, GunicornServer, chat_body, http, make_jwt, sse_events, start_servers, stop_servers, uid
from flask import Flask

from flask_llm_proxy import ConfigError, LLMProxy

SONNET = "claude-3-5-sonnet-20241022"
HAIKU = "claude-3-5-haiku-20241022"


# --- servers: started once for the module, in parallel ----------------------------------------


@pytest.fixture(scope="module")
def servers(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GunicornServer]]:
    specs = {
        # auth on, health private
        "auth": (1, {"LLM_PROXY_REQUIRE_AUTH": True, "LLM_PROXY_PUBLIC_HEALTH": False}),
        # auth on, health public
        "auth_public_health": (1, {"LLM_PROXY_REQUIRE_AUTH": True, "LLM_PROXY_PUBLIC_HEALTH": True}),
        # no auth: the identity is the client address; 2/minute makes identity observable
        "by_ip": (1, {"LLM_PROXY_RATE_LIMIT": "2/minute"}),
        # no auth, behind exactly one trusted proxy
        "by_ip_trusted": (1, {"LLM_PROXY_RATE_LIMIT": "2/minute", "LLM_PROXY_TRUSTED_PROXIES": 1}),
    }
    started = start_servers(upstream.base_url, tmp_path_factory.mktemp("access-auth"), specs)
    yield started
    stop_servers(started.values())


def post(server: GunicornServer, provider: str, body: Any, *, token: str | None = None, headers: dict[str, str] | None = None) -> Any:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return http().post(f"{server.url}/api/{provider}", json=body, headers=h, stream=True, timeout=20)


def assert_contract_error(resp: Any, status: int, type_: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("type"), str), body
    assert "msg" not in body, f"flask-jwt-extended's own error shape leaked through: {body}"
    if type_ is not None:
        assert body["type"] == type_, body
    return body


# --- JWT: every bad credential is a contract-shaped 401 and costs no upstream call -----------


def _alg_none() -> str:
    return make_jwt("mallory", secret=None, alg="none")  # type: ignore[arg-type]


def _hs512() -> str:
    """Signed with the right secret but an algorithm the app does not accept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT: the HMAC key is short for SHA-512
        return make_jwt("alice", alg="HS512")


BAD_CREDENTIALS = {
    "missing": lambda: None,
    "malformed-not-a-jwt": lambda: "Bearer not-a-jwt",
    "malformed-three-garbage-segments": lambda: "Bearer aaa.bbb.ccc",
    "malformed-empty-bearer": lambda: "Bearer ",
    "malformed-wrong-scheme": lambda: f"Basic {make_jwt('alice')}",
    "expired": lambda: f"Bearer {make_jwt('alice', expires_in=-120)}",
    "wrongly-signed": lambda: f"Bearer {make_jwt('alice', secret='another-secret-that-is-also-32-bytes-long')}",
    "alg-none": lambda: f"Bearer {_alg_none()}",
    "alg-none-unsigned-with-real-claims": lambda: "Bearer " + _alg_none().rsplit(".", 2)[0] + "." + make_jwt("alice").split(".")[1] + ".",
    "other-algorithm-same-secret": lambda: f"Bearer {_hs512()}",
    "refresh-token-not-access": lambda: f"Bearer {make_jwt('alice', type='refresh')}",
    "not-yet-valid": lambda: f"Bearer {make_jwt('alice', nbf=int(time.time()) + 3600)}",
}


@pytest.mark.parametrize("kind", list(BAD_CREDENTIALS))
def test_bad_credentials_get_a_contract_401_and_the_upstream_sees_nothing(servers: Any, upstream: Any, kind: str) -> None:
    rid = uid(f"auth-{kind}")
    auth = BAD_CREDENTIALS[kind]()
    headers = {} if auth is None else {"Authorization": auth}
    with post(servers["auth"], "anthropic", chat_body(f"id={rid} tokens=3"), headers=headers) as r:
        body = assert_contract_error(r, 401, "authentication_error")
        assert "Bearer" in r.headers.get("WWW-Authenticate", "")
    credential = auth.split(" ", 1)[1] if auth else ""  # what follows the scheme: a JWT, or garbage
    if credential:  # every one sent ("not-a-jwt" up to full JWTs) is long enough not to occur by chance
        assert credential not in r.text, f"the credential is echoed back: {body}"
        assert credential not in str(r.headers), f"the credential is echoed back in a header: {r.headers}"
    assert upstream.requests(id=rid) == []


def test_valid_token_streams_from_the_upstream(servers: Any, upstream: Any) -> None:
    rid = uid("auth-valid")
    with post(servers["auth"], "anthropic", chat_body(f"id={rid} tokens=4"), token=make_jwt("alice")) as r:
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert len([e for e in events if isinstance(e, dict) and e.get("token")]) == 4
    assert len(upstream.requests(id=rid)) == 1


@pytest.mark.parametrize("kind", ["missing", "malformed-not-a-jwt", "expired", "wrongly-signed", "alg-none"])
def test_models_listing_needs_a_valid_token(servers: Any, kind: str) -> None:
    auth = BAD_CREDENTIALS[kind]()
    r = http().get(f"{servers['auth'].url}/api/models", headers={} if auth is None else {"Authorization": auth}, timeout=10)
    assert_contract_error(r, 401, "authentication_error")


def test_models_listing_with_a_valid_token_lists_the_providers(servers: Any) -> None:
    r = http().get(f"{servers['auth'].url}/api/models", headers={"Authorization": f"Bearer {make_jwt('alice')}"}, timeout=10)
    assert r.status_code == 200
    assert set(r.json()["providers"]) == {"anthropic", "openai", "mock"}


@pytest.mark.parametrize("kind", ["missing", "expired", "wrongly-signed", "alg-none"])
def test_health_is_private_unless_public_health(servers: Any, kind: str) -> None:
    auth = BAD_CREDENTIALS[kind]()
    headers = {} if auth is None else {"Authorization": auth}
    assert_contract_error(http().get(f"{servers['auth'].url}/api/health", headers=headers, timeout=10), 401, "authentication_error")
    ok = http().get(f"{servers['auth'].url}/api/health", headers={"Authorization": f"Bearer {make_jwt('alice')}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    public = http().get(f"{servers['auth_public_health'].url}/api/health", timeout=10)
    assert public.status_code == 200 and public.json()["status"] == "ok"


def test_public_health_does_not_open_the_other_endpoints(servers: Any, upstream: Any) -> None:
    rid = uid("auth-public-health-chat")
    with post(servers["auth_public_health"], "anthropic", chat_body(f"id={rid}")) as r:
        assert_contract_error(r, 401, "authentication_error")
    assert_contract_error(http().get(f"{servers['auth_public_health'].url}/api/models", timeout=10), 401, "authentication_error")
    assert upstream.requests(id=rid) == []


# --- the llm_models claim narrows the models one user may call --------------------------------


@pytest.mark.parametrize("claim", [["claude-3-5-haiku-*"], "claude-3-5-haiku-20241022"])
def test_models_claim_refuses_a_model_outside_it_with_a_403_and_no_upstream_call(servers: Any, upstream: Any, claim: Any) -> None:
    token = make_jwt("narrow-user", llm_models=claim)
    rid = uid("claim-refused")
    with post(servers["auth"], "anthropic", chat_body(f"id={rid}", model=SONNET), token=token) as r:
        body = assert_contract_error(r, 403)
        assert SONNET in body["error"]
    assert upstream.requests(id=rid) == []
    rid_ok = uid("claim-allowed")
    with post(servers["auth"], "anthropic", chat_body(f"id={rid_ok} tokens=2", model=HAIKU), token=token) as r:
        assert r.status_code == 200, r.text
        assert sse_events(r)[-1] == "[DONE]"
    assert len(upstream.requests(id=rid_ok)) == 1


def test_models_claim_cannot_widen_the_providers_own_list(servers: Any, upstream: Any) -> None:
    token = make_jwt("wide-user", llm_models=["*"])
    rid = uid("claim-widen")
    with post(servers["auth"], "anthropic", chat_body(f"id={rid}", model="gpt-4o"), token=token) as r:
        assert_contract_error(r, 400, "model_not_allowed")
    assert upstream.requests(id=rid) == []


def test_models_claim_of_an_empty_list_allows_nothing(servers: Any, upstream: Any) -> None:
    rid = uid("claim-empty")
    with post(servers["auth"], "anthropic", chat_body(f"id={rid}", model=HAIKU), token=make_jwt("nobody", llm_models=[])) as r:
        assert_contract_error(r, 403)
    assert upstream.requests(id=rid) == []


# --- without auth: identity is the peer address; X-Forwarded-For only counts when trusted -----

_source_ips = (f"127.0.{a}.{b}" for a, b in itertools.product(range(1, 250), range(2, 250)))


def raw_post(
    server: GunicornServer, path: str, body: dict[str, Any], *, source_ip: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST from a chosen loopback source address (all of 127/8 is local): a distinct client."""
    conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=15, source_address=(source_ip, 0))
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def logged_identity(server: GunicornServer, request_id: str, timeout: float = 5.0) -> str:
    """The identity in the proxy's JSON log line for this request (written when it finishes)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log().splitlines():
            if request_id in line and line.lstrip().startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:  # a line still being written
                    continue
                if record.get("event") == "llm_proxy.request" and record.get("request_id") == request_id:
                    return record["identity"]
        if time.monotonic() > deadline:
            raise AssertionError(f"no request log line for {request_id}")
        time.sleep(0.05)


def mock_body() -> dict[str, Any]:
    return chat_body("hello", model="mock-1", stream=False)


def test_forged_x_forwarded_for_does_not_change_the_identity(servers: Any) -> None:
    server, ip = servers["by_ip"], next(_source_ips)
    results = []
    for k in range(4):
        rid = uid("xff-forged")
        status, _, _ = raw_post(
            server, "/api/mock", mock_body(), source_ip=ip, headers={"X-Forwarded-For": f"203.0.113.{k + 1}", "X-Request-ID": rid}
        )
        results.append((status, rid))
    assert [s for s, _ in results] == [200, 200, 429, 429], "each forged X-Forwarded-For got a fresh rate-limit bucket"
    for _, rid in results[:2]:
        assert logged_identity(server, rid) == f"ip:{ip}"


def test_forged_x_real_ip_and_forwarded_headers_do_not_change_the_identity(servers: Any) -> None:
    server, ip = servers["by_ip"], next(_source_ips)
    forged = [
        {"X-Real-IP": "198.51.100.1"},
        {"Forwarded": "for=198.51.100.2"},
        {"X-Forwarded-For": "198.51.100.3, 198.51.100.4", "X-Real-IP": "198.51.100.5"},
    ]
    statuses = [raw_post(server, "/api/mock", mock_body(), source_ip=ip, headers=h)[0] for h in forged]
    assert statuses == [200, 200, 429]


def test_distinct_client_addresses_are_distinct_identities(servers: Any) -> None:
    server, ip_a, ip_b = servers["by_ip"], next(_source_ips), next(_source_ips)
    assert [raw_post(server, "/api/mock", mock_body(), source_ip=ip_a, headers={})[0] for _ in range(3)] == [200, 200, 429]
    rid = uid("other-ip")
    assert raw_post(server, "/api/mock", mock_body(), source_ip=ip_b, headers={"X-Request-ID": rid})[0] == 200
    assert logged_identity(server, rid) == f"ip:{ip_b}"


def test_with_one_trusted_proxy_the_last_forwarded_hop_is_the_identity(servers: Any) -> None:
    server, ip = servers["by_ip_trusted"], next(_source_ips)
    client = "198.51.100.77"
    statuses, rids = [], []
    for forged_first in ("6.6.6.6", "7.7.7.7", "8.8.8.8"):
        rid = uid("xff-trusted")
        rids.append(rid)
        statuses.append(
            raw_post(
                server,
                "/api/mock",
                mock_body(),
                source_ip=ip,
                headers={"X-Forwarded-For": f"{forged_first}, {client}", "X-Request-ID": rid},
            )[0]
        )
    # the client can prepend anything, the hop our proxy appended stays the same: one bucket
    assert statuses == [200, 200, 429]
    assert logged_identity(server, rids[0]) == f"ip:{client}"
    # another last hop is another client
    rid = uid("xff-trusted-other")
    assert (
        raw_post(
            server, "/api/mock", mock_body(), source_ip=ip, headers={"X-Forwarded-For": f"{client}, 198.51.100.78", "X-Request-ID": rid}
        )[0]
        == 200
    )
    assert logged_identity(server, rid) == "ip:198.51.100.78"


def test_with_a_trusted_proxy_but_no_forwarded_header_the_peer_is_the_identity(servers: Any) -> None:
    server, ip = servers["by_ip_trusted"], next(_source_ips)
    rid = uid("trusted-no-xff")
    assert raw_post(server, "/api/mock", mock_body(), source_ip=ip, headers={"X-Request-ID": rid})[0] == 200
    assert logged_identity(server, rid) == f"ip:{ip}"


def test_with_auth_the_identity_is_the_token_subject(servers: Any) -> None:
    rid = uid("jwt-identity")
    r = http().post(
        f"{servers['auth'].url}/api/mock",
        json=mock_body(),
        headers={"Authorization": f"Bearer {make_jwt('carol')}", "X-Request-ID": rid, "X-Forwarded-For": "203.0.113.9"},
        timeout=10,
    )
    assert r.status_code == 200
    assert logged_identity(servers["auth"], rid) == "carol"


# --- in-process: configuration mistakes fail at init ------------------------------------------


def test_require_auth_without_a_jwt_manager_fails_at_init_naming_the_setting() -> None:
    app = Flask(__name__)
    app.config.update(
        LLM_PROXY_PROVIDERS={"mock": {"type": "mock", "models": ["*"], "pace_ms": 0}},
        LLM_PROXY_REQUIRE_AUTH=True,
        LLM_PROXY_RATE_LIMIT="",
        JWT_SECRET_KEY=JWT_SECRET,
        LLM_PROXY_USAGE_STORE="none",
    )
    with pytest.raises(ConfigError) as info:
        LLMProxy(app)
    assert info.value.key == "LLM_PROXY_REQUIRE_AUTH"
    assert "LLM_PROXY_REQUIRE_AUTH" in str(info.value)
    assert "llm_proxy" not in app.extensions


def test_require_auth_is_the_default() -> None:
    app = Flask(__name__)
    app.config.update(
        LLM_PROXY_PROVIDERS={"mock": {"type": "mock", "models": ["*"], "pace_ms": 0}}, LLM_PROXY_RATE_LIMIT="", LLM_PROXY_USAGE_STORE="none"
    )
    with pytest.raises(ConfigError, match="LLM_PROXY_REQUIRE_AUTH"):
        LLMProxy(app)


# --- the native SDK endpoints: the same gate, also for a JWT sent as x-api-key ----------------


def native_body(rid: str) -> dict[str, Any]:
    return {"model": SONNET, "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": f"id={rid} tokens=2"}]}


def auth_error_type(resp: Any) -> str | None:
    body = resp.json()
    err = body.get("error")
    return err.get("type") if isinstance(err, dict) else body.get("type")


NATIVE_BAD = [
    (header, kind)
    for header in ("Authorization", "x-api-key")
    for kind in ("missing", "malformed-not-a-jwt", "expired", "wrongly-signed", "alg-none", "refresh-token-not-access")
]


@pytest.mark.parametrize("header,kind", NATIVE_BAD)
def test_native_endpoint_refuses_bad_credentials_with_a_401_and_no_upstream_call(
    servers: Any, upstream: Any, header: str, kind: str
) -> None:
    auth = BAD_CREDENTIALS[kind]()
    headers: dict[str, str] = {}
    if auth is not None:
        headers[header] = auth if header == "Authorization" else auth.split(" ", 1)[-1]
    rid = uid(f"native-{kind}")
    r = http().post(f"{servers['auth'].url}/api/anthropic/v1/messages", json=native_body(rid), headers=headers, timeout=20)
    assert r.status_code == 401, r.text[:300]
    assert r.headers["Content-Type"].startswith("application/json")
    assert auth_error_type(r) == "authentication_error", r.text
    assert upstream.requests(id=rid) == []


def test_native_endpoint_accepts_a_valid_jwt_as_x_api_key(servers: Any, upstream: Any) -> None:
    rid = uid("native-x-api-key")
    with http().post(
        f"{servers['auth'].url}/api/anthropic/v1/messages",
        json=native_body(rid),
        headers={"x-api-key": make_jwt("erin")},
        stream=True,
        timeout=20,
    ) as r:
        assert r.status_code == 200, r.text[:300]
        assert b"message_stop" in r.raw.read()
    rec = upstream.requests(id=rid)
    assert len(rec) == 1 and rec[0]["headers"]["x-api-key"] == API_KEY  # the proxy's key went upstream, not the JWT


# in-process, with the upstream answered by `responses` (no network), and a host blocklist

ANTHROPIC_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.fixture
def blocklist_app() -> Iterator[tuple[Any, set[str], Any]]:
    import responses
    from flask_jwt_extended import JWTManager

    app = Flask(__name__)
    app.config.update(
        LLM_PROXY_PROVIDERS={"anthropic": {"api_key": "sk-inprocess", "base_url": "http://127.0.0.1:9", "models": ["claude-*"]}},
        LLM_PROXY_RATE_LIMIT="",
        LLM_PROXY_USAGE_STORE="none",
        JWT_SECRET_KEY=JWT_SECRET,
    )
    jwt_manager = JWTManager(app)
    revoked: set[str] = set()

    @jwt_manager.token_in_blocklist_loader
    def is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        return payload["jti"] in revoked

    LLMProxy(app)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, "http://127.0.0.1:9/v1/messages", body=ANTHROPIC_SSE, content_type="text/event-stream")
        yield app.test_client(), revoked, mock


def revoked_token(revoked: set[str]) -> str:
    import jwt

    token = make_jwt("logged-out-user")
    revoked.add(jwt.decode(token, options={"verify_signature": False})["jti"])
    return token


NATIVE_BODY = {"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path", ["/api/anthropic", "/api/anthropic/v1/messages"])
def test_a_revoked_or_refresh_token_in_the_authorization_header_is_refused(blocklist_app: Any, path: str) -> None:
    client, revoked, mock = blocklist_app
    for token in (revoked_token(revoked), make_jwt("alice", type="refresh")):
        r = client.post(path, json=NATIVE_BODY, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    assert len(mock.calls) == 0


X_API_KEY_BUG = (
    "BUG: auth._claims_from_alt_header checks a JWT sent as x-api-key with flask_jwt_extended.decode_token "
    "only, skipping what verify_jwt_in_request enforces for the Authorization header: the token type "
    "(refresh tokens pass), the host's token_in_blocklist_loader (revoked tokens pass) and the custom "
    "claims verification"
)


def test_a_revoked_token_sent_as_x_api_key_is_refused(blocklist_app: Any) -> None:
    client, revoked, mock = blocklist_app
    r = client.post("/api/anthropic/v1/messages", json=NATIVE_BODY, headers={"x-api-key": revoked_token(revoked)})
    assert len(mock.calls) == 0, "a revoked (logged-out) token was accepted through x-api-key"
    assert r.status_code == 401


def test_a_refresh_token_sent_as_x_api_key_is_refused(blocklist_app: Any) -> None:
    client, _, mock = blocklist_app
    r = client.post("/api/anthropic/v1/messages", json=NATIVE_BODY, headers={"x-api-key": make_jwt("alice", type="refresh")})
    assert len(mock.calls) == 0, "a refresh token was accepted as an access token through x-api-key"
    assert r.status_code == 401


# --- auth off and no JWTManager on the app: credential headers are ignored, never a 500 -------
# (the official SDKs always send Authorization or x-api-key, whatever the proxy needs)


@pytest.fixture
def app_without_jwt(upstream: Any) -> Any:
    from conftest import providers_for

    app = Flask("no-jwt-host")
    app.config.update(
        LLM_PROXY_PROVIDERS=providers_for(upstream.base_url),
        LLM_PROXY_REQUIRE_AUTH=False,
        LLM_PROXY_RATE_LIMIT="",
        LLM_PROXY_USAGE_STORE="none",
        LLM_PROXY_RETRY_BACKOFF=0.05,
    )
    LLMProxy(app)
    assert "flask-jwt-extended" not in app.extensions
    return app


@pytest.mark.parametrize("auth", ["Bearer whatever", f"Bearer {make_jwt('alice')}"])
def test_without_a_jwt_manager_and_auth_off_a_chat_with_an_authorization_header_streams(app_without_jwt: Any, auth: str) -> None:
    r = app_without_jwt.test_client().post("/api/mock", json=chat_body("hi", model="m"), headers={"Authorization": auth})
    assert r.status_code == 200, r.data[:300]
    assert b"[DONE]" in r.data


def test_without_a_jwt_manager_and_auth_off_models_with_an_authorization_header_lists_the_providers(app_without_jwt: Any) -> None:
    r = app_without_jwt.test_client().get("/api/models", headers={"Authorization": "Bearer whatever"})
    assert r.status_code == 200, r.data[:300]
    assert set(r.get_json()["providers"]) == {"anthropic", "openai", "mock"}


@pytest.mark.parametrize("header", ["x-api-key", "Authorization"])
def test_without_a_jwt_manager_and_auth_off_the_anthropic_native_endpoint_ignores_the_sdk_key(
    app_without_jwt: Any, upstream: Any, header: str
) -> None:
    rid = uid(f"nojwt-native-{header}")
    value = "sk-ant-anything" if header == "x-api-key" else "Bearer sk-ant-anything"
    r = app_without_jwt.test_client().post("/api/anthropic/v1/messages", json=native_body(rid), headers={header: value})
    assert r.status_code == 200, r.data[:300]
    assert b"message_stop" in r.data
    rec = upstream.requests(id=rid)
    assert len(rec) == 1 and rec[0]["headers"]["x-api-key"] == API_KEY  # the proxy's key, not the client's


def test_without_a_jwt_manager_and_auth_off_the_openai_native_endpoint_ignores_the_sdk_key(app_without_jwt: Any, upstream: Any) -> None:
    rid = uid("nojwt-openai")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"id={rid} tokens=2"}]}
    r = app_without_jwt.test_client().post("/api/openai/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-anything"})
    assert r.status_code == 200, r.data[:300]
    assert r.get_json()["choices"], r.data[:300]
    assert len(upstream.requests(id=rid)) == 1


def test_without_a_jwt_manager_the_identity_is_the_client_address_even_with_credential_headers(app_without_jwt: Any) -> None:
    from flask_llm_proxy.access.auth import identify

    settings = app_without_jwt.extensions["llm_proxy"].settings
    headers = {"Authorization": "Bearer whatever", "x-api-key": "whatever"}
    with app_without_jwt.test_request_context("/api/mock", headers=headers, environ_base={"REMOTE_ADDR": "10.1.2.3"}):
        assert identify(settings, alt_header=True) == ("ip:10.1.2.3", {})


def test_required_auth_without_a_jwt_manager_is_a_clear_401_not_a_crash(app_without_jwt: Any) -> None:
    """init_app refuses this configuration; should settings still reach identify() this way, the
    request fails closed with a message naming the missing JWT setup."""
    import dataclasses

    from flask_llm_proxy.access.auth import identify
    from flask_llm_proxy.errors import AuthenticationError

    settings = dataclasses.replace(app_without_jwt.extensions["llm_proxy"].settings, require_auth=True)
    for headers in ({}, {"Authorization": "Bearer whatever"}):
        with app_without_jwt.test_request_context("/api/mock", headers=headers):
            with pytest.raises(AuthenticationError, match="JWTManager"):
                identify(settings)


def test_requests_in_one_app_context_do_not_share_an_identity_or_an_error_shape() -> None:
    """A host test suite (or a middleware) may push one app context around several requests; Flask
    then shares ``g`` between them. Nothing the proxy keeps for a request may reach the next one:
    not the identity (limits, quotas and the ledger are charged to it), not the native endpoint's
    error shape."""
    from conftest import mock_host_app

    from flask_llm_proxy import usage_recorded

    app = mock_host_app(LLM_PROXY_RATE_LIMIT=None)
    app.config["LLM_PROXY_PROVIDERS"]["anthropic"] = {"api_key": API_KEY, "base_url": "http://127.0.0.1:9", "models": ["claude-*"]}
    LLMProxy(app)
    got: list[Any] = []
    usage_recorded.connect(lambda sender, record: got.append(record), app, weak=False)
    client = app.test_client()
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with app.app_context():
        for who in ("alice", "bob"):
            with client.post("/api/mock", json=chat, headers={"Authorization": f"Bearer {make_jwt(who)}"}) as r:
                assert r.status_code == 200 and r.get_data()  # recorded when closed, as a server closes it
        native = client.post("/api/anthropic/v1/messages", json={"model": "claude-x"})  # no max_tokens: refused
        neutral = client.post("/api/mock", json={"model": "m"})  # no messages: refused
    assert [rec.identity for rec in got] == ["alice", "bob"]
    assert native.status_code == 400 and native.get_json()["type"] == "error"  # Anthropic's shape
    assert neutral.status_code == 400 and neutral.get_json()["type"] == "invalid_request", neutral.get_json()  # the contract's
