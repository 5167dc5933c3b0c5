"""Several deployments per provider, failover before the first byte, fallbacks across providers.

Two fake upstreams play two deployments of one provider (``--label a`` / ``--label b``: a prompt's
``status@a=529`` scripts deployment a only). A deployment that fails before the first byte cools
down and the request moves to the next one at once; while it cools it is not called; when all are
cooling the typed error comes back; keys never appear in what names a deployment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, chat_body, http, sse_events, uid
from fake_upstream import FakeUpstreamProcess

from flask_llm_proxy.accounting.sqlite_store import SQLiteStore
from flask_llm_proxy.config import load_settings
from flask_llm_proxy.errors import ConfigError

KEY_B = "sk-test-SECOND-7d1a0b3c"  # deployment b's own account


@pytest.fixture(scope="module")
def deployment_a() -> Iterator[FakeUpstreamProcess]:
    with FakeUpstreamProcess(key=API_KEY, label="a") as up:
        yield up


@pytest.fixture(scope="module")
def deployment_b() -> Iterator[FakeUpstreamProcess]:
    with FakeUpstreamProcess(key=KEY_B, label="b") as up:
        yield up


def providers(a: Any, b: Any, other: Any) -> dict[str, Any]:
    return {
        "anthropic": {
            "api_key": API_KEY,
            "base_url": a.base_url,
            "models": ["claude-*"],
            "deployments": [{"label": "a"}, {"label": "b", "base_url": b.base_url, "api_key": KEY_B}],
        },
        "openai": {"api_key": API_KEY, "base_url": other.base_url + "/v1", "models": ["gpt-4o"]},
    }


@pytest.fixture
def two(start_proxy: Any, deployment_a: Any, deployment_b: Any, upstream: Any, tmp_path: Path) -> Any:
    def start(**overrides: Any) -> Any:
        db = tmp_path / "ledger.sqlite3"
        server = start_proxy(
            deployment_a.base_url,
            workers=1,
            LLM_PROXY_PROVIDERS=providers(deployment_a, deployment_b, upstream),
            LLM_PROXY_USAGE_STORE=f"sqlite:///{db}",
            **overrides,
        )
        server.store = SQLiteStore(str(db))
        return server

    return start


def calls(up: FakeUpstreamProcess, tag: str) -> int:
    return len([r for r in up.requests() if (r["id"] or "").startswith(tag)])


def records(server: Any, tag: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in server.store.records(0) if r["request_id"].startswith(tag)]
        if len(found) >= n or time.monotonic() > deadline:
            return sorted(found, key=lambda r: r["timestamp"])
        time.sleep(0.05)


def post(server: Any, prompt: str, rid: str, path: str = "/api/anthropic", **extra: Any) -> Any:
    return http().post(f"{server.url}{path}", json=chat_body(prompt, **extra), headers={"X-Request-ID": rid}, stream=True, timeout=30)


def test_a_deployment_answering_529_cools_down_and_the_next_one_serves(two: Any, deployment_a: Any, deployment_b: Any) -> None:
    server = two()
    tag = uid("fo")
    r = post(server, f"id={tag}-0 tokens=4 status@a=529", f"{tag}-0")
    assert r.status_code == 200 and r.headers["X-LLM-Proxy-Deployment"] == "b"
    events = sse_events(r)
    assert events[-1] == "[DONE]" and len([e for e in events if isinstance(e, dict) and e.get("token")]) == 4
    assert (calls(deployment_a, tag), calls(deployment_b, tag)) == (1, 1)
    # during its cool-down (30 s, no Retry-After) deployment a is not called; b takes everything
    for i in range(1, 5):
        r = post(server, f"id={tag}-{i} tokens=2", f"{tag}-{i}", stream=False)
        assert r.status_code == 200 and r.headers["X-LLM-Proxy-Deployment"] == "b"
    native = http().post(
        f"{server.url}/api/anthropic/v1/messages",
        timeout=30,
        json={"model": "claude-3-5-sonnet-20241022", "max_tokens": 50, "messages": [{"role": "user", "content": f"id={tag}-n"}]},
    )
    assert native.status_code == 200 and native.headers["X-LLM-Proxy-Deployment"] == "b"
    assert (calls(deployment_a, tag), calls(deployment_b, tag)) == (1, 6)
    ledger = records(server, tag, 5)
    assert [r["deployment"] for r in ledger] == ["b"] * 5
    assert ledger[0]["retries"] == 1 and ledger[0]["status"] == 200 and ledger[0]["error_type"] is None
    assert "deployment 'a' of 'anthropic' failed before the first byte (upstream_overloaded); left alone for 30 s" in server.log()


def test_a_cooled_deployment_comes_back_after_its_retry_after(two: Any, deployment_a: Any, deployment_b: Any) -> None:
    server = two()
    tag = uid("back")
    assert post(server, f"id={tag}-0 status@a=429 retry_after@a=1", f"{tag}-0").headers["X-LLM-Proxy-Deployment"] == "b"
    assert post(server, f"id={tag}-1", f"{tag}-1").headers["X-LLM-Proxy-Deployment"] == "b"
    time.sleep(1.5)
    # back, and first among equals (both idle)
    assert post(server, f"id={tag}-2", f"{tag}-2").headers["X-LLM-Proxy-Deployment"] == "a"


def test_requests_spread_over_deployments_fewest_in_flight_first(two: Any, deployment_a: Any, deployment_b: Any) -> None:
    server = two()
    tag = uid("spread")
    slow = post(server, f"id={tag}-slow tokens=40 pace_ms=50", f"{tag}-slow")
    assert slow.headers["X-LLM-Proxy-Deployment"] == "a"
    # a is busy with one stream: the next goes to b
    assert post(server, f"id={tag}-next tokens=2", f"{tag}-next", stream=False).headers["X-LLM-Proxy-Deployment"] == "b"
    slow.raw.read()


def test_when_every_deployment_is_cooling_the_typed_error_comes_back(two: Any, deployment_a: Any, deployment_b: Any) -> None:
    server = two()
    tag = uid("all")
    r = post(server, f"id={tag}-0 status@a=529 status@b=529", f"{tag}-0")
    assert r.status_code == 503
    body = r.json()
    assert body["type"] == "upstream_overloaded" and "every deployment of 'anthropic' is cooling down" in body["error"]
    assert 25 <= int(r.headers["Retry-After"]) <= 30 and r.headers["x-should-retry"] == "false"
    assert "X-LLM-Proxy-Deployment" not in r.headers
    assert (calls(deployment_a, tag), calls(deployment_b, tag)) == (1, 1)
    # the next request is answered at once, without calling either
    r = post(server, f"id={tag}-1 tokens=2", f"{tag}-1")
    assert r.status_code == 503 and r.json()["type"] == "upstream_overloaded" and int(r.headers["Retry-After"]) >= 25
    assert (calls(deployment_a, tag), calls(deployment_b, tag)) == (1, 1)
    ledger = records(server, tag, 2)
    assert [(x["status"], x["error_type"]) for x in ledger] == [(503, "upstream_overloaded")] * 2


def test_keys_never_appear_in_errors_or_logs_naming_a_deployment(two: Any, deployment_a: Any, deployment_b: Any) -> None:
    server = two()
    tag = uid("keys")
    # both echo the request's headers (their keys) in their error bodies
    r = post(server, f"id={tag} echo_headers=1 status@a=500 status@b=429", tag)
    assert r.status_code == 429
    text = r.text
    assert "[redacted]" in text
    for key in (API_KEY, KEY_B):
        assert key not in text and key not in server.log()
    assert "deployment 'a'" in server.log() and "deployment 'b'" in server.log()


def test_a_provider_that_failed_falls_back_to_the_configured_provider_and_model(two: Any, deployment_a: Any, upstream: Any) -> None:
    server = two(LLM_PROXY_FALLBACKS={"anthropic": ["openai:gpt-4o"]})
    tag = uid("fb")
    r = post(server, f"id={tag} tokens=3 status@a=529 status@b=503", tag)
    assert r.status_code == 200 and r.headers["X-LLM-Proxy-Fallback"] == "openai:gpt-4o"
    assert "X-LLM-Proxy-Deployment" not in r.headers  # openai has no deployments list
    events = sse_events(r)
    assert events[-1] == "[DONE]" and len([e for e in events if isinstance(e, dict) and e.get("token")]) == 3
    (sent,) = [x for x in upstream.requests(id=tag)]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "gpt-4o"
    (rec,) = records(server, tag, 1)
    assert (rec["provider"], rec["model"], rec["fallback_from"]) == ("openai", "gpt-4o", "anthropic:claude-3-5-sonnet-20241022")
    assert rec["retries"] == 2 and rec["error_type"] is None


def test_a_request_the_upstream_refused_does_not_fall_back(two: Any, upstream: Any) -> None:
    server = two(LLM_PROXY_FALLBACKS={"anthropic": ["openai:gpt-4o"]})
    tag = uid("fb-400")
    r = post(server, f"id={tag} status@a=400", tag)
    assert r.status_code == 400 and "X-LLM-Proxy-Fallback" not in r.headers
    assert upstream.requests(id=tag) == []


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        ({"deployments": []}, ".deployments", "non-empty list"),
        ({"deployments": [{"label": "a"}, {"label": "a"}]}, ".deployments[1].label", "earlier deployment"),
        ({"deployments": [{"label": "with space"}]}, ".deployments[0].label", "response header"),
        ({"deployments": [{"models": ["x"]}]}, ".deployments[0]", "unknown option"),
        ({"deployments": [{}, {"base_url": "ftp://x"}]}, ".deployments[1].base_url", "http"),
        ({"deployments": [{}, {"api_key": "sk-bad\n"}]}, ".deployments[1].api_key", "the key itself is not shown"),
    ],
)
def test_a_wrong_deployment_names_its_place(entry: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"LLM_PROXY_PROVIDERS": {"anthropic": {"api_key": "sk-good", "models": ["*"], **entry}}}, environ={})
    assert info.value.key == "LLM_PROXY_PROVIDERS['anthropic']" + key and problem in info.value.problem
    assert "sk-bad" not in str(info.value)


def test_deployments_inherit_what_they_omit_and_every_key_is_scrubbed() -> None:
    s = load_settings(
        {
            "LLM_PROXY_PROVIDERS": {
                "anthropic": {
                    "api_key": "sk-one",
                    "models": ["*"],
                    "headers": {"anthropic-beta": "x"},
                    "deployments": [{"label": "primary"}, {"label": "eu", "base_url": "https://eu.example.test", "api_key": "sk-two"}],
                }
            }
        },
        environ={},
    )
    p = s.providers["anthropic"]
    assert [(d.label, d.base_url, d.api_key, dict(d.headers)) for d in p.deployments] == [
        ("primary", "https://api.anthropic.com", "sk-one", {"anthropic-beta": "x"}),
        ("eu", "https://eu.example.test", "sk-two", {"anthropic-beta": "x"}),
    ]
    assert {"sk-one", "sk-two"} <= set(p.secrets) and all(set(d.secrets) == set(p.secrets) for d in p.deployments)
    assert "sk-" not in repr(p)


@pytest.mark.parametrize(
    ("fallbacks", "problem"),
    [
        ({"nope": ["openai:gpt-4o"]}, "no such provider"),
        ({"anthropic": "openai:gpt-4o"}, "list"),
        ({"anthropic": ["openai"]}, "provider:model"),
        ({"anthropic": ["anthropic:claude-x"]}, "another configured provider"),
        ({"anthropic": ["openai:gpt-2"]}, "does not allow"),
    ],
)
def test_a_wrong_fallback_names_its_key(fallbacks: Any, problem: str) -> None:
    providers = {"anthropic": {"api_key": "k", "models": ["*"]}, "openai": {"api_key": "k", "models": ["gpt-4o"]}}
    with pytest.raises(ConfigError) as info:
        load_settings({"LLM_PROXY_PROVIDERS": providers, "LLM_PROXY_FALLBACKS": fallbacks}, environ={})
    assert info.value.key.startswith("LLM_PROXY_FALLBACKS") and problem in info.value.problem
