"""What current models do, through the contract endpoints: attachments in, reasoning out,
structured output. End to end: a real gunicorn with gevent workers in front of the fake upstream,
whose request log shows what reached the provider's API.

The acceptance of docs/multimodal.rst: every image form reaches each upstream API in its own shape;
an oversized, mistyped or unwanted attachment is a 400 naming it with no upstream call; thinking
and response_format reach the upstream; a thinking stream is the same stream as before for a
client that did not ask, and carries reasoning events for one that did; reasoning tokens are
billed as output; the native endpoints pass all of it through unchanged.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, GunicornServer, base_env, http, sse_events, uid
from fake_upstream import SIGNATURE, FakeUpstreamProcess, expected_reasoning, expected_text

SONNET = "claude-sonnet-4-5"
# a 1x1 PNG, and files that only need the first bytes of their format (the fake upstream never decodes them)
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
B64 = {name: base64.b64encode(data).decode() for name, data in (("png", PNG), ("jpeg", JPEG), ("pdf", PDF))}
IMAGE_URL = "https://example.com/cat.png"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multimodal") / "usage.sqlite3"


@pytest.fixture(scope="module")
def server(upstream: FakeUpstreamProcess, ledger: Path) -> Iterator[GunicornServer]:
    base = upstream.base_url
    providers = {
        "anthropic": {"api_key": API_KEY, "base_url": base, "models": ["claude-*"]},
        "openai": {"api_key": API_KEY, "base_url": base + "/v1", "models": ["gpt-4o", "gpt-4o-mini", "o4-mini"]},
        "text-only": {"type": "anthropic", "api_key": API_KEY, "base_url": base, "models": ["claude-*"], "attachments": False},
        "small-images": {
            "type": "openai",
            "api_key": API_KEY,
            "base_url": base + "/v1",
            "models": ["gpt-4o"],
            "attachments": ["image"],
            "max_attachment_bytes": 1000,
        },
    }
    profiles = {
        "no-photos": {"provider": "anthropic", "model": SONNET, "attachments": False},
        "estimating": {
            "provider": "anthropic",
            "model": SONNET,
            "client_system": "allow",
            "max_input_tokens": 3000,
            "max_attachment_bytes": 100_000,
        },
    }
    srv = GunicornServer(
        base_env(
            base, ledger.parent, LLM_PROXY_PROVIDERS=providers, LLM_PROXY_PROFILES=profiles, LLM_PROXY_USAGE_STORE=f"sqlite:///{ledger}"
        ),
        workers=1,
        name="multimodal",
    )
    yield srv
    srv.stop()


def post(server: GunicornServer, provider: str, body: dict[str, Any]) -> tuple[int, Any]:
    """The answer: (status, parsed SSE events) for a stream, (status, JSON) otherwise."""
    with http().post(f"{server.url}/api/{provider}", json=body, stream=True, timeout=30) as r:
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            return r.status_code, sse_events(r)
        return r.status_code, json.loads(r.raw.read())


def user(rid: str, *blocks: dict[str, Any], knobs: str = "tokens=2") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": f"What is in it? id={rid} {knobs}"}, *blocks]}]


def sent_body(upstream: FakeUpstreamProcess, rid: str) -> dict[str, Any]:
    recs = upstream.requests(id=rid)
    assert len(recs) == 1, recs
    return recs[0]["body"]


def refused(server: GunicornServer, upstream: FakeUpstreamProcess, provider: str, body: dict[str, Any], rid: str, path: str) -> str:
    status, answer = post(server, provider, body)
    assert status == 400, answer
    assert answer["error"].startswith(f"{path}: ") and answer["param"] == path, answer
    assert upstream.requests(id=rid) == []
    return answer["error"]


def agentary_view(events: list[Any]) -> tuple[str, int]:
    """What agentary-js's CloudProvider makes of a stream: every JSON ``data:`` line is a token
    event (its ``tokenId`` must count from 0 without gaps), the answer is the ``token`` fields
    of the events before ``isLast``. Returns (answer, number of token events)."""
    data = [e for e in events if isinstance(e, dict)]
    assert [e["tokenId"] for e in data] == list(range(len(data)))
    return "".join(e["token"] for e in data if not e.get("isLast")), len(data)


# --- images and documents in ------------------------------------------------------------------

IMAGE_FORMS = [  # (the block the client sends, the source it stands for)
    (
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64["png"]}},
        {"type": "base64", "media_type": "image/png", "data": B64["png"]},
    ),
    ({"type": "image", "source": {"type": "url", "url": IMAGE_URL}}, {"type": "url", "url": IMAGE_URL}),
    (
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + B64["jpeg"]}},
        {"type": "base64", "media_type": "image/jpeg", "data": B64["jpeg"]},
    ),
    ({"type": "image_url", "image_url": {"url": IMAGE_URL}}, {"type": "url", "url": IMAGE_URL}),
]


def test_images_in_every_source_form_reach_anthropic_as_image_blocks(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("img-anthropic")
    status, events = post(server, "anthropic", {"model": SONNET, "messages": user(rid, *(b for b, _ in IMAGE_FORMS))})
    assert status == 200 and agentary_view(events)[0] == expected_text(2)
    content = sent_body(upstream, rid)["messages"][0]["content"]
    assert content[1:] == [{"type": "image", "source": source} for _, source in IMAGE_FORMS]


def test_images_in_every_source_form_reach_openai_as_image_url_parts(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("img-openai")
    status, events = post(server, "openai", {"model": "gpt-4o", "messages": user(rid, *(b for b, _ in IMAGE_FORMS))})
    assert status == 200 and agentary_view(events)[0] == expected_text(2)
    content = sent_body(upstream, rid)["messages"][0]["content"]
    expected = [IMAGE_URL if s["type"] == "url" else f"data:{s['media_type']};base64,{s['data']}" for _, s in IMAGE_FORMS]
    assert content[0]["type"] == "text"
    assert content[1:] == [{"type": "image_url", "image_url": {"url": url}} for url in expected]


def test_image_detail_reaches_openai_and_is_refused_by_anthropic(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    block = {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}}
    rid = uid("detail")
    assert post(server, "openai", {"model": "gpt-4o", "messages": user(rid, block)})[0] == 200
    assert sent_body(upstream, rid)["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}}
    rid = uid("detail")
    refused(server, upstream, "anthropic", {"model": SONNET, "messages": user(rid, block)}, rid, "messages[0].content[1].detail")


def test_images_in_the_responses_form_reach_openai_unchanged(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("img-responses")
    parts = [
        {"type": "input_text", "text": f"What is it? id={rid} tokens=3"},
        {"type": "input_image", "image_url": "data:image/png;base64," + B64["png"], "detail": "high"},
        {"type": "input_image", "image_url": IMAGE_URL},
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64," + B64["pdf"]},
    ]
    body = {"model": "gpt-4o", "input": [{"role": "user", "content": parts}], "max_output_tokens": 50}
    status, events = post(server, "openai", body)
    assert status == 200 and agentary_view(events)[0] == expected_text(3)
    sent = upstream.requests(id=rid)[0]
    assert sent["path"] == "/v1/responses" and sent["body"]["input"] == body["input"]


def test_a_pdf_reaches_anthropic_as_a_document_and_openai_as_a_file(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": B64["pdf"]}, "title": "Q3.pdf"}
    rid = uid("pdf-anthropic")
    assert post(server, "anthropic", {"model": SONNET, "messages": user(rid, doc)})[0] == 200
    assert sent_body(upstream, rid)["messages"][0]["content"][1] == doc
    rid = uid("pdf-openai")
    assert post(server, "openai", {"model": "gpt-4o", "messages": user(rid, doc)})[0] == 200
    assert sent_body(upstream, rid)["messages"][0]["content"][1] == {
        "type": "file",
        "file": {"filename": "Q3.pdf", "file_data": "data:application/pdf;base64," + B64["pdf"]},
    }
    # OpenAI's own shape, to Anthropic
    rid = uid("pdf-file")
    file_part = {"type": "file", "file": {"filename": "Q3.pdf", "file_data": "data:application/pdf;base64," + B64["pdf"]}}
    assert post(server, "anthropic", {"model": SONNET, "messages": user(rid, file_part)})[0] == 200
    assert sent_body(upstream, rid)["messages"][0]["content"][1] == doc


def test_an_oversized_image_is_a_400_naming_it_without_an_upstream_call(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    """Anthropic takes 5 MiB of base64 per image; a host's max_attachment_bytes is stricter still.
    Both fit LLM_PROXY_MAX_BODY_BYTES (8 MB), so the request is read and refused by its block."""
    big = base64.b64encode(PNG + b"\x00" * (4 * 1024 * 1024)).decode()
    assert 5 * 1024 * 1024 < len(big) < 8_000_000
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big}}
    rid = uid("big")
    err = refused(server, upstream, "anthropic", {"model": SONNET, "messages": user(rid, block)}, rid, "messages[0].content[1]")
    assert "Anthropic takes at most 5.2 MB per image" in err, err
    small = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG + b"\x00" * 1000).decode()}}
    rid = uid("big-host")
    err = refused(
        server, upstream, "small-images", {"model": "gpt-4o", "messages": user(rid, small)}, rid, "messages[0].content[1].image_url.url"
    )
    assert "this provider takes images up to 1,000 bytes" in err, err


@pytest.mark.parametrize("provider, model", [("anthropic", SONNET), ("openai", "gpt-4o")])
@pytest.mark.parametrize(
    "block, path, says",
    [
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": B64["png"]}},
            "messages[0].content[1].source.media_type",
            "image/png",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4="}},
            "messages[0].content[1].image_url.url",
            "image/webp",
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64["jpeg"]}},
            "messages[0].content[1].source.data",
            "image/jpeg data",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64["pdf"]}},
            "messages[0].content[1].image_url.url",
            "application/pdf data",
        ),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "messages[0].content[1].image_url.url", "http(s) URL"),
    ],
    ids=["bmp", "svg-data-url", "jpeg-said-png", "pdf-said-png", "file-url"],
)
def test_a_wrong_type_image_is_a_400_naming_it_without_an_upstream_call(
    server: GunicornServer, upstream: FakeUpstreamProcess, provider: str, model: str, block: dict, path: str, says: str
) -> None:
    rid = uid("wrong-type")
    err = refused(server, upstream, provider, {"model": model, "messages": user(rid, block)}, rid, path)
    assert says in err, err


def test_attachments_the_host_turned_off_are_a_400(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    image = IMAGE_FORMS[0][0]
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64," + B64["pdf"]}}
    rid = uid("off")
    err = refused(server, upstream, "text-only", {"model": SONNET, "messages": user(rid, image)}, rid, "messages[0].content[1]")
    assert "turned them off" in err
    rid = uid("off")
    refused(server, upstream, "small-images", {"model": "gpt-4o", "messages": user(rid, pdf)}, rid, "messages[0].content[1]")
    rid = uid("off")
    body = {
        "model": "gpt-4o",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": f"id={rid}"},
                    {"type": "input_file", "file_data": "data:application/pdf;base64," + B64["pdf"]},
                ],
            }
        ],
    }
    refused(server, upstream, "small-images", body, rid, "input[0].content[1]")


def test_a_profile_can_turn_attachments_off_and_down(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("profile-off")
    err = refused(server, upstream, "profiles/no-photos", {"messages": user(rid, IMAGE_FORMS[0][0])}, rid, "messages[0].content[1]")
    assert "turned them off" in err
    big = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG + b"\x00" * 200_000).decode()},
    }
    rid = uid("profile-cap")
    err = refused(server, upstream, "profiles/estimating", {"messages": user(rid, big)}, rid, "messages[0].content[1].source")
    assert "up to 100.0 kB" in err


def test_a_profiles_input_estimate_counts_an_image_not_its_base64(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    """80 kB of base64 would be 20,000 "tokens" as text; the profile allows 3,000."""
    photo = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG + b"\x00" * 60_000).decode()},
    }
    rid = uid("profile-estimate")
    cached = {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]}
    status, _ = post(server, "profiles/estimating", {"messages": [cached, *user(rid, photo)]})
    assert status == 200
    sent = sent_body(upstream, rid)
    assert sent["messages"][0]["content"][1] == photo
    assert sent["system"] == [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]  # allowed: kept as sent


def test_the_native_endpoints_honour_attachments_turned_off(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("native-off")
    body = {"model": SONNET, "max_tokens": 100, "messages": user(rid, IMAGE_FORMS[0][0])}
    r = http().post(f"{server.url}/api/text-only/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}, timeout=30)
    assert r.status_code == 400 and r.json()["type"] == "error", r.text  # Anthropic's error shape, for its SDK
    assert r.json()["error"]["message"].startswith("messages[0].content[1]: ") and upstream.requests(id=rid) == []
    rid = uid("native-cap")
    big = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG + b"\x00" * 2000).decode()}}
    r = http().post(f"{server.url}/api/small-images/v1/chat/completions", json={"model": "gpt-4o", "messages": user(rid, big)}, timeout=30)
    assert r.status_code == 400 and "1,000 bytes" in r.json()["error"]["message"], r.text
    rid = uid("native-ok")
    small = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64["png"]}}
    r = http().post(
        f"{server.url}/api/small-images/v1/chat/completions", json={"model": "gpt-4o", "messages": user(rid, small)}, timeout=30
    )
    assert r.status_code == 200 and sent_body(upstream, rid)["messages"][0]["content"][1] == small


def test_file_id_references_are_refused(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    """The provider's files belong to the proxy's API key, shared by every user of the app."""
    rid = uid("file-id")
    part = {"type": "file", "file": {"file_id": "file-someone-elses"}}
    refused(server, upstream, "openai", {"model": "gpt-4o", "messages": user(rid, part)}, rid, "messages[0].content[1].file.file_id")


# --- thinking and structured output reach the upstream -------------------------------------------


def test_thinking_and_cache_control_reach_anthropic(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("thinking")
    ephemeral = {"type": "ephemeral"}
    body = {
        "model": SONNET,
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": ephemeral}]},
            *user(rid, {**IMAGE_FORMS[0][0], "cache_control": ephemeral}),
        ],
        "tools": [{"name": "lookup", "parameters": {"type": "object"}, "cache_control": ephemeral}],
    }
    status, events = post(server, "anthropic", body)
    assert status == 200, events
    sent = sent_body(upstream, rid)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["system"] == [{"type": "text", "text": "Be brief.", "cache_control": ephemeral}]
    assert sent["messages"][0]["content"][1]["cache_control"] == ephemeral
    assert sent["tools"][0]["cache_control"] == ephemeral


def test_thinking_that_leaves_no_room_for_the_answer_is_a_400(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("budget")
    body = {"model": SONNET, "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 2048}, "messages": user(rid)}
    assert "max_tokens (2000)" in refused(server, upstream, "anthropic", body, rid, "thinking.budget_tokens")


def test_reasoning_effort_and_response_format_reach_openai(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("rf-openai")
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
    }
    status, _ = post(server, "openai", {"model": "o4-mini", "messages": user(rid), "reasoning_effort": "high", "response_format": rf})
    assert status == 200
    sent = sent_body(upstream, rid)
    assert sent["reasoning_effort"] == "high" and sent["response_format"] == rf
    rid = uid("rf-json")
    assert post(server, "openai", {"model": "gpt-4o", "messages": user(rid), "response_format": {"type": "json_object"}})[0] == 200
    assert sent_body(upstream, rid)["response_format"] == {"type": "json_object"}


def test_response_format_becomes_anthropics_output_config_or_a_400(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    rid = uid("rf-anthropic")
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert post(server, "anthropic", {"model": SONNET, "messages": user(rid), "response_format": rf})[0] == 200
    sent = sent_body(upstream, rid)
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}} and "response_format" not in sent
    rid = uid("rf-anthropic-json")
    err = refused(
        server,
        upstream,
        "anthropic",
        {"model": SONNET, "messages": user(rid), "response_format": {"type": "json_object"}},
        rid,
        "response_format",
    )
    assert "schema" in err


def test_thinking_on_openai_and_reasoning_effort_on_anthropic_are_400s(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("cross")
    refused(
        server,
        upstream,
        "openai",
        {"model": "gpt-4o", "messages": user(rid), "thinking": {"type": "enabled", "budget_tokens": 2048}},
        rid,
        "thinking",
    )
    refused(server, upstream, "anthropic", {"model": SONNET, "messages": user(rid), "reasoning_effort": "low"}, rid, "reasoning_effort")


# --- reasoning out -------------------------------------------------------------------------------

THINKING_CASES = [  # provider, model, the fake's knobs, whether the upstream reports reasoning tokens apart
    ("anthropic", SONNET, "", False),
    ("openai", "gpt-4o", "", True),
    ("openai", "gpt-4o", "think_as=reasoning", True),
]


def thinking_body(provider: str, model: str, rid: str, knobs: str, **extra: Any) -> dict[str, Any]:
    prompt = f"id={rid} tokens=4 think=6 {knobs}"
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    if provider == "anthropic":
        body.update(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048})
    return body


@pytest.mark.parametrize("provider, model, knobs, _", THINKING_CASES, ids=["anthropic", "deepseek-style", "vllm-style"])
def test_a_thinking_stream_is_todays_stream_for_a_client_that_did_not_ask(
    server: GunicornServer, provider: str, model: str, knobs: str, _: bool
) -> None:
    status, events = post(server, provider, thinking_body(provider, model, uid("quiet"), knobs))
    assert status == 200
    status, plain = post(server, provider, {"model": model, "messages": [{"role": "user", "content": f"id={uid('plain')} tokens=4"}]})
    assert [sorted(e) for e in events if isinstance(e, dict)] == [sorted(e) for e in plain if isinstance(e, dict)]
    answer, n = agentary_view(events)
    assert answer == expected_text(4) and n == 5  # 4 tokens and the last event, nothing of the thinking
    assert not any("reasoning" in json.dumps(e) for e in events)
    assert events[-2]["usage"]["outputTokens"] == 10  # thinking is billed as output all the same


@pytest.mark.parametrize("provider, model, knobs, apart", THINKING_CASES, ids=["anthropic", "deepseek-style", "vllm-style"])
def test_a_client_that_asks_gets_the_thinking_as_reasoning_events(
    server: GunicornServer, provider: str, model: str, knobs: str, apart: bool
) -> None:
    status, events = post(server, provider, thinking_body(provider, model, uid("think"), knobs, include_reasoning=True))
    assert status == 200
    answer, n = agentary_view(events)
    assert answer == expected_text(4)  # agentary-js's view of the answer is unchanged
    data = [e for e in events if isinstance(e, dict)]
    reasoning = [e for e in data if "reasoning" in e]
    assert all(e["token"] == "" for e in reasoning)
    assert "".join(e["reasoning"] for e in reasoning) == expected_reasoning(6)
    assert data.index(reasoning[-1]) < next(i for i, e in enumerate(data) if e["token"])  # the thinking comes first
    assert data[0]["isFirst"] and "reasoning" in data[0]
    signatures = [e["reasoningSignature"] for e in reasoning if "reasoningSignature" in e]
    assert signatures == ([SIGNATURE] if provider == "anthropic" else [])
    assert n == 4 + len(reasoning) + 1
    usage = data[-1]["usage"]
    assert usage["outputTokens"] == 10 and usage["reasoningTokens"] == (6 if apart else 0)


def test_the_responses_form_relays_reasoning_summaries_when_asked(server: GunicornServer) -> None:
    body = {"model": "gpt-4o", "input": f"id={uid('summary')} tokens=3 think=5", "reasoning": {"effort": "low", "summary": "auto"}}
    status, quiet = post(server, "openai", body)
    assert status == 200 and agentary_view(quiet) == (expected_text(3), 4)
    status, events = post(server, "openai", {**body, "input": f"id={uid('summary')} tokens=3 think=5", "include_reasoning": True})
    answer, n = agentary_view(events)
    assert answer == expected_text(3) and n == 3 + 5 + 1
    assert "".join(e.get("reasoning", "") for e in events if isinstance(e, dict)) == expected_reasoning(5)
    usage = events[-2]["usage"]
    assert (usage["outputTokens"], usage["reasoningTokens"]) == (8, 5)


def test_stream_false_carries_the_reasoning_and_the_blocks_to_send_back(server: GunicornServer) -> None:
    status, answer = post(server, "anthropic", thinking_body("anthropic", SONNET, uid("whole"), "", include_reasoning=True, stream=False))
    assert status == 200
    assert answer["content"] == expected_text(4) and answer["reasoning"] == expected_reasoning(6)
    assert answer["reasoningBlocks"] == [{"type": "thinking", "thinking": expected_reasoning(6), "signature": SIGNATURE}]
    status, quiet = post(server, "anthropic", thinking_body("anthropic", SONNET, uid("whole"), "", stream=False))
    assert set(quiet) == {"content", "finishReason", "usage"} and quiet["usage"]["completionTokens"] == 10


def test_thinking_blocks_go_back_to_anthropic_with_the_tool_results(server: GunicornServer, upstream: FakeUpstreamProcess) -> None:
    rid = uid("thinking-turn")
    thinking = {"type": "thinking", "thinking": expected_reasoning(6), "signature": SIGNATURE}
    body = {
        **thinking_body("anthropic", SONNET, rid, ""),
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [thinking, {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "arguments": {"city": "Oslo"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "result": "rain"},
                    {"type": "text", "text": f"id={rid} tokens=2"},
                ],
            },
        ],
        "tools": [{"name": "get_weather", "parameters": {"type": "object"}}],
    }
    assert post(server, "anthropic", body)[0] == 200
    assert sent_body(upstream, rid)["messages"][1]["content"][0] == thinking


def ledger_row(ledger: Path, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(ledger) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM llm_proxy_usage WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, request_id
            return dict(row)
        time.sleep(0.05)


def test_reasoning_tokens_are_billed_as_output_and_kept_in_the_ledger(server: GunicornServer, ledger: Path) -> None:
    rid = uid("billed")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"id={rid} tokens=4 think=6 input_tokens=100"}]}
    with http().post(f"{server.url}/api/openai", json=body, headers={"X-Request-ID": rid}, timeout=30) as r:
        assert r.status_code == 200
    row = ledger_row(ledger, rid)
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"], row["estimated"]) == (100, 10, 6, 0)
    assert row["cost_usd"] == pytest.approx((100 * 2.5 + 10 * 10.0) / 1e6)  # gpt-4o: 2.50 in, 10.00 out per million


def test_a_stream_cut_while_thinking_estimates_the_thinking_as_output(server: GunicornServer, ledger: Path) -> None:
    """The client did not ask for the reasoning, so none of it was relayed; the upstream billed it."""
    rid = uid("cut-thinking")
    body = {
        **thinking_body("anthropic", SONNET, rid, ""),
        "messages": [{"role": "user", "content": f"id={rid} tokens=10 think=30 drop_after=2"}],
    }
    with http().post(f"{server.url}/api/anthropic", json=body, headers={"X-Request-ID": rid}, timeout=30) as r:
        _ = r.content  # read to the end (the upstream cuts it)
    row = ledger_row(ledger, rid)
    assert row["estimated"] == 1 and row["error_type"] == "network_error"
    assert row["output_tokens"] >= 32


# --- the native endpoints pass it all through ---------------------------------------------------


def test_native_endpoints_pass_attachments_thinking_and_formats_through_unchanged(
    server: GunicornServer, upstream: FakeUpstreamProcess
) -> None:
    rid = uid("native-messages")
    body = {
        "model": SONNET,
        "max_tokens": 4096,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"id={rid} tokens=2 think=3"},
                    IMAGE_FORMS[0][0],
                    {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
                ],
            }
        ],
    }
    headers = {"anthropic-version": "2023-06-01"}
    with http().post(f"{server.url}/api/anthropic/v1/messages", json=body, headers=headers, stream=True, timeout=30) as r:
        assert r.status_code == 200
        raw = r.raw.read()
    assert sent_body(upstream, rid) == body
    assert b'"type":"thinking_delta"' in raw and SIGNATURE.encode() in raw  # the upstream's own events

    rid = uid("native-chat")
    body = {
        "model": "gpt-4o",
        "reasoning_effort": "low",
        "response_format": {"type": "json_object"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"id={rid} tokens=2"},
                    {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
                ],
            }
        ],
    }
    with http().post(f"{server.url}/api/openai/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200, r.text
    assert sent_body(upstream, rid) == body
