"""Limits a host expects by default: an output-token cap, a longest stream, and load shedding.

A stream that runs past ``LLM_PROXY_MAX_STREAM_SECONDS`` ends with the contract's ``error:`` line
(code ``TIMEOUT``; the native endpoints with their own error event) and its record; past
``LLM_PROXY_MAX_STREAMS_PER_WORKER`` a new request gets 503 ``overloaded`` at once while the
streams already running go on untouched.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_body, http, mock_host_app, sse_events, uid, wait_for

from flask_llm_proxy import LLMProxy
from flask_llm_proxy.accounting.sqlite_store import SQLiteStore
from flask_llm_proxy.config import load_settings
from flask_llm_proxy.state import stream_cap


def test_max_tokens_has_a_documented_default_cap() -> None:
    app = mock_host_app()
    LLMProxy(app)
    assert app.config["LLM_PROXY_MAX_TOKENS"] == 32768
    with app.test_client() as c:
        r = c.post("/api/mock", json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000_000})
        assert r.status_code == 400 and "max_tokens" in r.get_json()["error"] and "32768" in r.get_json()["error"]
        assert (
            c.post(
                "/api/mock", json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32768, "stream": False}
            ).status_code
            == 200
        )


def test_the_default_cap_is_not_sent_when_a_client_asks_for_no_limit_but_a_set_one_is() -> None:
    """A model whose own maximum is lower than the default would refuse the request that carried it."""
    from flask_llm_proxy.contract.request import ChatRequest
    from flask_llm_proxy.providers.openai import ChatCompletionsAdapter

    providers = {"openai": {"api_key": "k", "models": ["*"]}}
    req = ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    default = load_settings({"LLM_PROXY_PROVIDERS": providers}, environ={})
    body = ChatCompletionsAdapter().build(req, default.providers["openai"], default)
    assert "max_completion_tokens" not in body and default.max_tokens == 32768
    app = mock_host_app(LLM_PROXY_PROVIDERS=providers, LLM_PROXY_MAX_TOKENS=4000)
    LLMProxy(app)
    st = app.extensions["llm_proxy"]
    assert ChatCompletionsAdapter().build(req, st.settings.providers["openai"], st.settings)["max_completion_tokens"] == 4000


def test_a_stream_past_max_stream_seconds_ends_with_a_timeout_line_and_its_record(start_proxy: Any, upstream: Any, tmp_path: Path) -> None:
    db = tmp_path / "cap.sqlite3"
    server = start_proxy(upstream.base_url, LLM_PROXY_MAX_STREAM_SECONDS=2, LLM_PROXY_USAGE_STORE=f"sqlite:///{db}")
    tag = uid("cap")
    r = http().post(
        f"{server.url}/api/anthropic",
        json=chat_body(f"id={tag} tokens=400 pace_ms=25"),
        headers={"X-Request-ID": tag},
        stream=True,
        timeout=30,
    )
    assert r.status_code == 200
    events = sse_events(r)
    tokens = [e for e in events if isinstance(e, dict)]
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "TIMEOUT" and events[-1][1]["statusCode"] == 504
    assert "[DONE]" not in events and not any(e.get("isLast") for e in tokens)
    assert 10 < len(tokens) < 400
    # the upstream call ends with it, and the request has its record
    assert upstream.wait_for_request(tag, lambda rec: rec["client_closed"], timeout=5)["tokens_sent"] < 400
    store = SQLiteStore(str(db))
    (rec,) = wait_for(lambda: [x for x in store.records(0) if x["request_id"] == tag], 5)
    assert (rec["status"], rec["error_type"], rec["output_tokens"], rec["estimated"]) == (200, "timeout", len(tokens), True)


def test_a_native_stream_past_the_limit_ends_with_the_providers_error_event(start_proxy: Any, upstream: Any) -> None:
    server = start_proxy(upstream.base_url, LLM_PROXY_MAX_STREAM_SECONDS=1.5)
    tag = uid("cap-native")
    r = http().post(
        f"{server.url}/api/anthropic/v1/messages",
        stream=True,
        timeout=30,
        json={
            "model": "claude-3-5-sonnet-20241022",
            "max_tokens": 500,
            "stream": True,
            "messages": [{"role": "user", "content": f"id={tag} tokens=400 pace_ms=25"}],
        },
    )
    raw = r.raw.read().decode()
    last = raw.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    error = json.loads(last.split("data: ", 1)[1])["error"]
    assert error["type"] == "api_error" and "longer than the proxy allows" in error["message"]
    assert "message_stop" not in raw
    upstream.wait_for_request(tag, lambda rec: rec["client_closed"], timeout=5)


def test_past_max_streams_per_worker_a_burst_gets_503_overloaded_at_once(start_proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # gunicorn's worker_connections = 30 (example_app/gunicorn.conf.py reads WORKER_CONNECTIONS; the
    # post_worker_init hook tells the proxy): the default cap is 30 - 10 = 20 streams
    db = tmp_path / "shed.sqlite3"
    server = start_proxy(upstream.base_url, workers=1, WORKER_CONNECTIONS="30", LLM_PROXY_USAGE_STORE=f"sqlite:///{db}")
    tag = uid("shed")
    results: dict[int, tuple[int, Any, float]] = {}
    start = threading.Barrier(26)

    def one(i: int) -> None:
        start.wait()
        r = http().post(f"{server.url}/api/anthropic", json=chat_body(f"id={tag}-{i} tokens=160 pace_ms=50"), stream=True, timeout=30)
        body = r.raw.read()
        results[i] = (r.status_code, (r.headers.get("Retry-After"), body), time.monotonic())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(26)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = [v for v in results.values() if v[0] == 200]
    shed = [v for v in results.values() if v[0] != 200]
    assert len(served) == 20 and len(shed) == 6
    for status, (retry_after, body), _ in shed:
        assert status == 503 and retry_after == "2"
        assert json.loads(body)["type"] == "overloaded"
    # at once: every refusal came before the first stream (8 s long) ended, and the streams are whole
    assert max(t for _, _, t in shed) < min(t for _, _, t in served)
    assert all(b'"isLast":true' in body for _, (_, body), _ in served)
    assert len([rec for rec in upstream.requests() if (rec["id"] or "").startswith(tag)]) == 20  # no upstream call for a 503
    store = SQLiteStore(str(db))
    assert len(wait_for(lambda: len([x for x in store.records(0) if x["request_id"]]) >= 20 and list(store.records(0)))) == 20
    # places free up as streams end
    assert http().post(f"{server.url}/api/anthropic", json=chat_body("tokens=2"), timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("configured", "connections", "cap"),
    [(None, None, 900), (None, 2000, 1800), (None, 30, 20), (None, 5, 1), (50, 2000, 50), (0, 2000, 0)],
)
def test_the_streams_per_worker_default_derives_from_worker_connections(
    monkeypatch: Any, configured: Any, connections: Any, cap: int
) -> None:
    from flask_llm_proxy import gunicorn as hooks

    monkeypatch.setattr(hooks, "WORKER_CONNECTIONS", connections)
    assert stream_cap(load_settings({"LLM_PROXY_MAX_STREAMS_PER_WORKER": configured}, environ={})) == cap
