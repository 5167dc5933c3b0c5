"""The browser side, end to end: Debian's chromium (Playwright, headless) runs the example page.

Servers (all on loopback, started once for this module):

* the fake upstream (``upstream`` fixture of conftest.py);
* PAGE: the example app under gunicorn; it serves the page, ``/dev/token`` (EXAMPLE_DEV_TOKENS=1)
  and, for the same-origin tests, its own open proxy at ``/api``;
* PROXY: another example app on another port, ``LLM_PROXY_REQUIRE_AUTH=true``, CORS allowing only
  the PAGE origin ``http://127.0.0.1:<page port>``, a rate limit of 3/minute per user (one worker,
  so the in-memory counter is exact; each test signs in as its own user so they do not interfere).

A page loaded from ``http://localhost:<page port>`` is a different origin that PROXY does not allow.

Also here: a Node-free unit check of ``llm-proxy-client.js`` (its SSE parser fed split chunks, its
retry and timeout rules against a fake ``fetch``), run inside the browser with ``page.evaluate``.

The page's screenshot is saved to ``test-artifacts/browser-demo.png`` under the repository root.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import ROOT, GunicornServer, base_env, http, make_jwt, providers_for, screenshot
from fake_upstream import FakeUpstreamProcess, expected_text

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL = "claude-3-5-sonnet-20241022"
PINNED = "You answer questions about ACME's products."
DEMO_PROFILES = {  # the example app's two kinds: one pinned by the server, one free
    "support": {"provider": "anthropic", "model": MODEL, "system": PINNED, "client_system": "forbid"},
    "free": {"provider": "anthropic", "model": MODEL, "client_system": "allow"},
}
ARTIFACTS = ROOT / "test-artifacts"


# --- servers and browser ---------------------------------------------------------------------


class Servers:
    def __init__(self, page: GunicornServer, proxy: GunicornServer) -> None:
        self.page = page
        self.proxy = proxy

    def page_url(self, *, origin: str | None = None, **params: str) -> str:
        """The demo page pointed at PROXY (``api``) with presets, from ``origin`` (default PAGE)."""
        query = {"api": self.proxy.url + "/api", "provider": "anthropic", "model": MODEL, **params}
        return f"{origin or self.page.url}/?{urlencode(query)}"


DEMO_ANSWER = (
    "Because the browser is not yours: anything it holds, its user can read. The page sends its "
    "prompt to your Flask backend, which adds the provider's key, streams each token back as it "
    "arrives, and records what the answer cost."
)


def _start_servers(upstream_url: str, tmp_page: Path, tmp_proxy: Path) -> Servers:
    providers = {
        **providers_for(upstream_url),
        "mock": {"type": "mock", "models": ["*"], "tokens": len(DEMO_ANSWER.split(" ")), "pace_ms": 15, "text": DEMO_ANSWER},
    }
    page = GunicornServer(base_env(upstream_url, tmp_page, EXAMPLE_DEV_TOKENS="1", LLM_PROXY_PROVIDERS=providers), workers=1, name="page")
    try:
        proxy = GunicornServer(
            base_env(
                upstream_url,
                tmp_proxy,
                LLM_PROXY_REQUIRE_AUTH=True,
                LLM_PROXY_CORS_ORIGINS=[page.url],
                LLM_PROXY_RATE_LIMIT="3/minute",
                LLM_PROXY_PROFILES=DEMO_PROFILES,
                EXAMPLE_DEV_TOKENS="0",
            ),
            workers=1,
            name="cors-proxy",
        )
    except BaseException:
        page.stop()
        raise
    return Servers(page, proxy)


@pytest.fixture(scope="module")
def stack(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, Any]]:
    """Both gunicorns start in a thread while chromium launches (Playwright's sync objects belong
    to the thread that made them, so the browser stays in this one)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            _start_servers, upstream.base_url, tmp_path_factory.mktemp("browser-page"), tmp_path_factory.mktemp("browser-proxy")
        )
        try:
            with playwright_sync.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    yield future.result(timeout=60), browser
                finally:
                    browser.close()
        finally:
            try:
                started = future.result(timeout=60)
            except Exception:  # noqa: BLE001 - they never came up: nothing to stop
                started = None
            if started is not None:
                stopping = pool.submit(started.proxy.stop)
                started.page.stop()
                stopping.result()


@pytest.fixture(scope="module")
def servers(stack: tuple[Servers, Any]) -> Servers:
    return stack[0]


@pytest.fixture(scope="module")
def chromium(stack: tuple[Servers, Any]) -> Any:
    return stack[1]


@pytest.fixture(scope="module")
def context(chromium: Any) -> Iterator[Any]:
    ctx = chromium.new_context(viewport={"width": 900, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A fresh tab per test: sessionStorage (where the demo keeps its token) is per tab."""
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.console_messages_seen = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.console_messages_seen.append(m.text))  # type: ignore[attr-defined]
    yield pg
    pg.close()


# --- page helpers ------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def open_demo(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")


def sign_in(page: Any, user: str) -> None:
    page.fill("#user", user)
    page.click("#signin")
    page.wait_for_function("document.getElementById('whoami').textContent.includes('Signed in')")


def wait_models_loaded(page: Any) -> None:
    page.wait_for_function("document.getElementById('model-hint').textContent.startsWith('Allowed:')")


def send(page: Any, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.click("#send")


def wait_finished(page: Any, timeout: float = 15_000) -> str:
    page.wait_for_function(
        "['done', 'error', 'stopped'].includes(document.getElementById('status').dataset.state)"
        " && !document.getElementById('send').disabled",
        timeout=timeout,
    )
    return page.get_attribute("#status", "data-state")


def text_of(page: Any, selector: str) -> str:
    return page.eval_on_selector(selector, "e => e.textContent")


def error_shown(page: Any) -> tuple[str | None, str]:
    if page.eval_on_selector("#error", "e => e.hidden"):
        return None, ""
    return page.get_attribute("#error", "data-kind"), text_of(page, "#error")


# --- the client module on its own (no server behaviour involved) ---------------------------------

CLIENT_UNIT_JS = r"""
async () => {
  const m = await import('/api/static/llm-proxy-client.js');
  const out = {};
  const enc = new TextEncoder();

  // ---- SSE parser: the same stream split at every byte position must give the same events
  const wire = ': ping\r\n\r\n' +
    'data: {"token":"Hö","tokenId":0,"isFirst":true,"ttfbMs":5}\r\n\r\n' +
    'event: message\rdata: {"token":"👋 日本語",\rdata: "tokenId":1}\r\r' +
    'id: 7\nretry: 10\ndata:{"token":"\\n\\"q\\" \\\\","tokenId":2}\n\n' +
    ': keep-alive\n' +
    'data: {"token":"","tokenId":3,"isLast":true,"finishReason":"stop"}\n\n' +
    'data: [DONE]\n\n';
  const bytes = enc.encode(wire);
  async function eventsOf(chunks) {
    const body = new ReadableStream({ start(c) { for (const ch of chunks) c.enqueue(ch); c.close(); } });
    const evs = [];
    for await (const ev of m.decodeSSE(body)) evs.push(ev);
    return JSON.stringify(evs);
  }
  const whole = await eventsOf([bytes]);
  out.events = JSON.parse(whole);
  let splitMismatch = [];
  for (let i = 1; i < bytes.length; i++) {
    const got = await eventsOf([bytes.slice(0, i), bytes.slice(i)]);
    if (got !== whole) splitMismatch.push(i);
  }
  const oneByOne = await eventsOf(Array.from(bytes, (b) => new Uint8Array([b])));
  out.splitMismatch = splitMismatch;
  out.byteByByteSame = oneByOne === whole;
  // "\r" at the end of one chunk and "\n" at the start of the next is ONE line end
  const p = new m.SSEParser();
  const crlf = [...p.feed('data: a\r'), ...p.feed('\ndata: b\r'), ...p.feed('\n\r'), ...p.feed('\n'), ...p.end()];
  out.crlfSplit = crlf;
  const p2 = new m.SSEParser();
  out.parsedErrorLine = [...p2.feed('data: {"token":"x","tokenId":0}\n\nerr'), ...p2.feed('or: {"message":"boom","statusCode":502,"code":"UPSTREAM_ERROR"}\n\n')];

  // ---- a scripted fetch: each call takes the next step
  function sse(parts, { close = true, hold = false } = {}) {
    return (init) => new Response(new ReadableStream({
      start(c) {
        for (const part of parts) c.enqueue(enc.encode(part));
        if (close && !hold) c.close();
        if (init.signal) init.signal.addEventListener('abort', () => { try { c.error(new DOMException('aborted', 'AbortError')); } catch {} });
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  }
  function json(status, body, headers = {}) {
    return () => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
  }
  const netError = () => { throw new TypeError('Failed to fetch'); };
  const never = (init) => new Promise((_, reject) => init.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))));
  const OK = ['data: {"token":"a","tokenId":0,"isFirst":true,"ttfbMs":3}\n\n', 'data: {"token":"b","tokenId":1}\n\n',
              'data: {"token":"","tokenId":2,"isLast":true,"finishReason":"stop","usage":{"inputTokens":1,"outputTokens":2}}\n\n',
              'data: [DONE]\n\n'];

  async function run(steps, opts = {}, body = { model: 'm', messages: [{ role: 'user', content: 'hi' }], max_new_tokens: 5 }) {
    const calls = [];
    const times = [];
    const t0 = performance.now();
    const fetch = async (url, init) => {
      calls.push({ url, method: init.method, headers: init.headers, body: init.body && JSON.parse(init.body) });
      times.push(Math.round(performance.now() - t0));
      const step = steps[Math.min(calls.length - 1, steps.length - 1)];
      return step(init);
    };
    const client = new m.LLMProxyClient({ baseUrl: 'http://proxy.test/api/', provider: 'anthropic', retryDelaysMs: [30, 60], fetch, ...opts });
    const chunks = [];
    let error = null;
    try {
      if (opts.complete) chunks.push(await client.complete(body));
      else for await (const c of client.stream(body)) chunks.push(c);
    } catch (e) {
      error = { name: e.name, status: e.status, statusCode: e.statusCode, code: e.code, type: e.type, retryAfter: e.retryAfter,
                attempts: e.attempts, phase: e.phase, message: e.message };
    }
    return { calls: calls.length, first: calls[0], times, tokens: chunks.map((c) => c.token).join(''), chunks, error };
  }

  const defaults = new m.LLMProxyClient({ baseUrl: '/api', provider: 'x' });
  out.defaults = { maxRetries: defaults.maxRetries, retryDelaysMs: defaults.retryDelaysMs, timeoutMs: defaults.timeoutMs };
  out.ok = await run([sse(OK)], { getToken: async () => 'jwt-1' });
  out.retry5xx = await run([json(503, { error: 'busy', type: 'service_unavailable' }), json(500, {}), sse(OK)]);
  out.exhausted = await run([json(502, { error: 'upstream error: x', type: 'upstream_error' })]);
  out.noRetryHeader = await run([json(502, { error: 'e', type: 'upstream_error' }, { 'x-should-retry': 'false' }), sse(OK)]);
  out.r429 = await run([json(429, { error: 'slow down', type: 'rate_limited', retryAfter: 12 }, { 'Retry-After': '7' }), sse(OK)]);
  out.r429body = await run([json(429, { error: 'slow down', type: 'budget_exceeded', retryAfter: 12 }), sse(OK)]);
  out.r400 = await run([json(400, { error: 'bad', type: 'invalid_request' }), sse(OK)]);
  out.r401 = await run([json(401, { error: 'the token has expired', type: 'authentication_error' }), sse(OK)]);
  out.network = await run([netError, sse(OK)]);
  out.networkAll = await run([netError]);
  out.errorLine = await run([sse([OK[0], OK[1], 'error: {"message":"upstream overloaded","statusCode":503,"code":"UPSTREAM_OVERLOADED"}\n\n']), sse(OK)]);
  out.cut = await run([sse([OK[0], OK[1]]), sse(OK)]);
  out.cutAfterLast = await run([sse([OK[0], OK[1], OK[2]]), sse(OK)]);
  out.idle = await run([sse([OK[0]], { hold: true }), sse(OK)], { timeoutMs: 150 });
  out.headersTimeout = await run([never, sse(OK)], { timeoutMs: 150 });
  out.keepalive = await run([(init) => new Response(new ReadableStream({
    async start(c) {
      c.enqueue(enc.encode(OK[0]));
      for (let i = 0; i < 4; i++) { await new Promise((r) => setTimeout(r, 60)); c.enqueue(enc.encode(': ping\n\n')); }
      for (const part of OK.slice(1)) c.enqueue(enc.encode(part));
      c.close();
    },
  }), { status: 200 })], { timeoutMs: 150 });
  out.complete = await run([json(200, { content: 'ab', finishReason: 'stop', usage: { promptTokens: 1, completionTokens: 2, totalTokens: 3 } })], { complete: true });
  return out;
}
"""


def test_client_module_unit(servers: Servers, page: Any) -> None:
    page.goto(servers.page.url + "/api/health")
    r = page.evaluate(CLIENT_UNIT_JS)

    # SSE parsing: CRLF / CR / LF, comments, multi-line data, id/retry fields, any split point
    evs = r["events"]
    assert [e["data"] for e in evs][-1] == "[DONE]"
    tokens = [json.loads(e["data"])["token"] for e in evs[:-1]]
    assert tokens == ["Hö", "👋 日本語", '\n"q" \\', ""]
    assert r["splitMismatch"] == [] and r["byteByByteSame"]
    assert r["crlfSplit"] == [{"event": "message", "data": "a\nb"}]
    assert r["parsedErrorLine"][-1] == {"event": "error", "data": '{"message":"boom","statusCode":502,"code":"UPSTREAM_ERROR"}'}

    # defaults: the seed's retry strategy (3 attempts, 1 s then 2 s) and a 60 s timeout
    assert r["defaults"] == {"maxRetries": 2, "retryDelaysMs": [1000, 2000], "timeoutMs": 60000}

    ok = r["ok"]
    assert ok["error"] is None and ok["tokens"] == "ab" and ok["calls"] == 1
    assert ok["first"]["url"] == "http://proxy.test/api/anthropic" and ok["first"]["method"] == "POST"
    assert ok["first"]["body"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 5, "stream": True}
    assert ok["first"]["headers"]["Authorization"] == "Bearer jwt-1"
    assert ok["first"]["headers"]["Content-Type"] == "application/json"
    assert ok["chunks"][0]["isFirst"] is True and ok["chunks"][0]["ttfbMs"] == 3 and ok["chunks"][1]["isFirst"] is False
    assert ok["chunks"][-1]["isLast"] is True and ok["chunks"][-1]["usage"] == {"inputTokens": 1, "outputTokens": 2}

    # 5xx retried with the configured waits; exhausted retries surface the last error
    assert r["retry5xx"]["error"] is None and r["retry5xx"]["calls"] == 3 and r["retry5xx"]["tokens"] == "ab"
    t = r["retry5xx"]["times"]
    assert t[1] - t[0] >= 25 and t[2] - t[1] >= 55, t
    ex = r["exhausted"]
    assert ex["calls"] == 3 and ex["error"]["name"] == "ProxyHTTPError" and ex["error"]["status"] == 502 and ex["error"]["attempts"] == 3
    assert r["noRetryHeader"]["calls"] == 1 and r["noRetryHeader"]["error"]["status"] == 502

    # 4xx never retried; Retry-After (header first, else the body's retryAfter) in seconds
    assert r["r429"]["calls"] == 1 and r["r429"]["error"]["retryAfter"] == 7 and r["r429"]["error"]["type"] == "rate_limited"
    assert (
        r["r429body"]["calls"] == 1 and r["r429body"]["error"]["retryAfter"] == 12 and r["r429body"]["error"]["type"] == "budget_exceeded"
    )
    assert r["r400"]["calls"] == 1 and r["r400"]["error"]["status"] == 400 and r["r400"]["error"]["code"] == "INVALID_REQUEST"
    assert r["r401"]["calls"] == 1 and r["r401"]["error"]["message"] == "the token has expired"

    # network errors retried before the first byte
    assert r["network"]["calls"] == 2 and r["network"]["error"] is None and r["network"]["tokens"] == "ab"
    assert r["networkAll"]["calls"] == 3 and r["networkAll"]["error"]["name"] == "ProxyNetworkError"

    # in-stream errors: never retried, tokens already yielded stay yielded
    el = r["errorLine"]
    assert el["calls"] == 1 and el["tokens"] == "ab"
    assert el["error"]["name"] == "ProxyStreamError" and el["error"]["statusCode"] == 503 and el["error"]["code"] == "UPSTREAM_OVERLOADED"
    for case in ("cut", "cutAfterLast"):
        assert r[case]["calls"] == 1 and r[case]["error"]["name"] == "ProxyStreamError" and r[case]["error"]["code"] == "STREAM_INCOMPLETE"

    # timeouts: waiting for headers, and silence between chunks; keep-alive comments reset the idle timer
    assert (
        r["headersTimeout"]["calls"] == 1
        and r["headersTimeout"]["error"]["name"] == "ProxyTimeoutError"
        and r["headersTimeout"]["error"]["phase"] == "headers"
    )
    assert r["idle"]["calls"] == 1 and r["idle"]["tokens"] == "a" and r["idle"]["error"]["phase"] == "stream"
    assert r["keepalive"]["error"] is None and r["keepalive"]["tokens"] == "ab"

    # stream: false
    c = r["complete"]
    assert c["error"] is None and c["first"]["body"]["stream"] is False and c["chunks"][0]["content"] == "ab"


def test_client_module_against_the_proxy(servers: Servers, page: Any) -> None:
    """The module used directly (as an app would), same origin: stream, stream: false, models."""
    page.goto(servers.page.url + "/api/health")
    r = page.evaluate(
        """async (model) => {
          const { LLMProxyClient } = await import('/api/static/llm-proxy-client.js');
          const client = new LLMProxyClient({ baseUrl: '/api', provider: 'anthropic' });
          const messages = (p) => [{ role: 'user', content: p }];
          const chunks = [];
          for await (const c of client.stream({ model, messages: messages('tokens=12'), max_new_tokens: 50 })) chunks.push(c);
          const whole = await client.complete({ model, messages: messages('tokens=4'), max_new_tokens: 50 });
          const models = await client.models();
          let cut = null;  // leaving the loop early must not throw
          for await (const c of client.stream({ model, messages: messages('tokens=50 pace_ms=20') })) { if (c.tokenId === 2) break; }
          return { chunks, whole, providers: Object.keys(models.providers), cut };
        }""",
        MODEL,
    )
    chunks = r["chunks"]
    assert "".join(c["token"] for c in chunks) == expected_text(12)
    assert [c["tokenId"] for c in chunks] == list(range(len(chunks)))
    assert chunks[0]["isFirst"] and isinstance(chunks[0]["ttfbMs"], int)
    assert chunks[-1]["isLast"] and chunks[-1]["token"] == "" and chunks[-1]["finishReason"] == "stop"
    assert sum(c["isLast"] for c in chunks) == 1
    assert r["whole"]["content"] == expected_text(4) and r["whole"]["usage"]["completionTokens"] == 4
    assert {"anthropic", "openai", "mock"} <= set(r["providers"])


# --- the demo page against real servers ----------------------------------------------------------


def test_tokens_appear_progressively(servers: Servers, page: Any) -> None:
    open_demo(page, servers.page_url())
    sign_in(page, unique("stream"))
    wait_models_loaded(page)
    assert page.input_value("#provider") == "anthropic" and page.input_value("#model") == MODEL
    assert "claude-*" in text_of(page, "#model-hint")

    # record every change of the output with its time, inside the page
    page.evaluate(
        """() => {
          window.__changes = [];
          const out = document.getElementById('output');
          new MutationObserver(() => window.__changes.push([performance.now(), out.textContent.length]))
            .observe(out, {subtree: true, characterData: true, childList: true});
        }"""
    )
    n = 20
    send(page, f"Say hello in a few languages. tokens={n} pace_ms=100 id={unique('progressive')}")
    page.wait_for_function("document.getElementById('output').textContent.length > 0", timeout=10_000)
    first_seen = time.monotonic()
    partial = text_of(page, "#output")
    state_then = page.get_attribute("#status", "data-state")
    assert state_then == "streaming", state_then
    assert expected_text(n).startswith(partial) and len(partial) < len(expected_text(n)) / 2

    assert wait_finished(page) == "done", error_shown(page)
    finished = time.monotonic()
    assert finished - first_seen > 1.2, "the whole answer arrived at once"
    assert text_of(page, "#output") == expected_text(n)
    changes = page.evaluate("window.__changes")
    lengths = sorted({length for _, length in changes if length})
    assert len(lengths) >= n - 2, lengths  # one visible step per token, not one big block
    span_ms = changes[-1][0] - next(t for t, length in changes if length)
    assert span_ms > 1200, span_ms

    assert text_of(page, "#tokens") == str(n)
    assert re.fullmatch(r"\d+ ms", text_of(page, "#ttfb")), text_of(page, "#ttfb")
    assert re.fullmatch(r"\d+ in / \d+ out", text_of(page, "#usage"))
    cost = text_of(page, "#cost")
    assert cost == "—" or cost.startswith("$"), cost
    assert error_shown(page) == (None, "")

    screenshot(page, "browser-progressive.png", ROOT / "test-artifacts" / "browser-progressive.png")


def test_the_demo_streams_a_readable_answer_for_the_readme(servers: Servers, page: Any) -> None:
    """The README's picture: the example app's own page, a real answer streamed through it."""
    open_demo(page, servers.page_url(api=servers.page.url + "/api", provider="mock", model="mock-1"))
    sign_in(page, unique("readme"))
    wait_models_loaded(page)
    send(page, "Why should the API key stay on the server?")
    assert wait_finished(page) == "done", error_shown(page)
    assert text_of(page, "#output") == DEMO_ANSWER
    assert text_of(page, "#tokens") == str(len(DEMO_ANSWER.split(" ")))
    screenshot(page, "demo.png", ROOT / "example_app" / "screenshot.png")


# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==")


def test_an_attached_image_reaches_the_upstream_as_an_image_block(
    servers: Servers, page: Any, upstream: FakeUpstreamProcess, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG)
    open_demo(page, servers.page_url())
    sign_in(page, unique("image"))
    wait_models_loaded(page)
    page.set_input_files("#image", str(photo))
    assert "photo.png (image/png" in text_of(page, "#image-info")
    scenario = unique("image")
    send(page, f"What is in this picture? tokens=6 id={scenario}")
    assert wait_finished(page) == "done", error_shown(page)
    assert text_of(page, "#output") == expected_text(6)
    content = upstream.requests(id=scenario)[0]["body"]["messages"][0]["content"]
    assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}}
    assert content[0]["type"] == "text" and scenario in content[0]["text"]

    # removed again: the next prompt goes out as text alone
    page.click("#image-clear")
    scenario = unique("no-image")
    send(page, f"And now? tokens=2 id={scenario}")
    assert wait_finished(page) == "done", error_shown(page)
    assert isinstance(upstream.requests(id=scenario)[0]["body"]["messages"][0]["content"], str)


def test_an_image_of_another_type_than_its_name_says_is_refused_in_plain_words(
    servers: Servers, page: Any, upstream: FakeUpstreamProcess, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"%PDF-1.4 not an image at all")
    open_demo(page, servers.page_url())
    sign_in(page, unique("bad-image"))
    wait_models_loaded(page)
    page.set_input_files("#image", str(fake))
    scenario = unique("bad-image")
    send(page, f"tokens=2 id={scenario}")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "request" and "HTTP 400" in text and "application/pdf data, but its media type says image/png" in text, text
    assert upstream.requests(id=scenario) == []


def test_rate_limit_shows_retry_time(servers: Servers, page: Any) -> None:
    open_demo(page, servers.page_url())
    sign_in(page, unique("ratelimit"))
    wait_models_loaded(page)
    for i in range(3):  # PROXY allows 3 requests a minute per user
        send(page, f"tokens=2 id={unique('rl')}")
        assert wait_finished(page) == "done", (i, error_shown(page))
    send(page, f"tokens=2 id={unique('rl')}")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "rate_limited", text
    m = re.search(r"Try again in (\d+) seconds?", text)
    assert m and 1 <= int(m.group(1)) <= 60, text
    assert text_of(page, "#output") == ""


def test_mid_stream_error_is_shown(servers: Servers, page: Any, upstream: FakeUpstreamProcess) -> None:
    open_demo(page, servers.page_url())
    sign_in(page, unique("midstream"))
    wait_models_loaded(page)
    scenario = unique("midstream")
    send(page, f"tokens=10 pace_ms=20 error_after=3 id={scenario}")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "stream", text
    # the fake upstream's Anthropic error event is an overloaded_error: the proxy's line says 503
    assert "stopped after 3 tokens" in text and "Overloaded" in text and re.search(r"status 5\d\d", text), text
    assert text_of(page, "#output") == expected_text(3)  # what arrived stays visible
    assert text_of(page, "#tokens") == "3"
    assert len(upstream.requests(id=scenario)) == 1  # an in-stream error is never retried


def test_upstream_failure_is_shown(servers: Servers, page: Any, upstream: FakeUpstreamProcess) -> None:
    open_demo(page, servers.page_url())
    sign_in(page, unique("upstream5xx"))
    wait_models_loaded(page)
    scenario = unique("fail")
    send(page, f"status={','.join(['500'] * 9)} id={scenario}")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "upstream" and "HTTP 502" in text and "Try again later" in text, text
    assert text_of(page, "#output") == ""

    # The proxy already retried the upstream (3 calls) and answers with x-should-retry: false so
    # that clients do not multiply the attempts. A cross-origin page can only see that header when
    # CORS exposes it.
    calls = len(upstream.requests(id=scenario))
    exposed = (
        http()
        .post(servers.proxy.url + "/api/anthropic", data=b"{}", headers={"Origin": servers.page.url, "Content-Type": "application/json"})
        .headers.get("Access-Control-Expose-Headers", "")
    )
    assert "x-should-retry" in exposed.lower()
    assert calls == 3


def test_page_honours_x_should_retry(servers: Servers, page: Any, upstream: FakeUpstreamProcess) -> None:
    """Same origin (PAGE's own open proxy at /api), where every response header is readable: the
    proxy's final 502 carries x-should-retry: false, so the page makes one attempt only."""
    open_demo(page, f"{servers.page.url}/?provider=anthropic&model={MODEL}")
    wait_models_loaded(page)
    scenario = unique("fail-same-origin")
    send(page, f"status={','.join(['500'] * 9)} id={scenario}")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "upstream" and "HTTP 502" in text, text
    assert len(upstream.requests(id=scenario)) == 3  # the proxy's own 3 attempts, nothing more


def test_expired_sign_in_says_sign_in_again(servers: Servers, page: Any) -> None:
    url = servers.page_url()
    open_demo(page, url)
    expired = make_jwt(unique("expired"), expires_in=-120)
    page.evaluate(
        "([key, token]) => sessionStorage.setItem(key, JSON.stringify({token, user: 'old-user'}))",
        [f"llm-proxy-demo:{servers.proxy.url}/api", expired],
    )
    open_demo(page, url)
    page.wait_for_function("!document.getElementById('error').hidden")
    kind, text = error_shown(page)
    assert kind == "auth" and "sign in again" in text, text
    send(page, "tokens=2")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "auth" and "sign in again" in text and "expired" in text, text


def test_budget_exceeded_is_shown(servers: Servers, page: Any) -> None:
    """Budget refusals are the proxy's 429 ``budget_exceeded``: the wording on a canned answer."""
    body = {"error": "daily budget of $1.00 used up", "type": "budget_exceeded", "code": "BUDGET_EXCEEDED", "retryAfter": 3600}
    page.route(
        "**/api/anthropic",
        lambda route: route.fulfill(status=429, headers={"Retry-After": "3600"}, content_type="application/json", body=json.dumps(body)),
    )
    open_demo(page, f"{servers.page.url}/?provider=anthropic&model={MODEL}")  # same-origin /api
    wait_models_loaded(page)
    send(page, "tokens=2")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "budget" and "budget is used up" in text and "Try again in 3600 seconds" in text, text


def test_disallowed_origin_cannot_read_the_stream(servers: Servers, page: Any, upstream: FakeUpstreamProcess) -> None:
    other_origin = servers.page.url.replace("127.0.0.1", "localhost")
    assert other_origin != servers.page.url
    open_demo(page, servers.page_url(origin=other_origin))
    sign_in(page, unique("cors"))  # the token comes from its own origin: that works
    # the model list from PROXY is refused too (CORS); the preset provider/model stay usable, and
    # sending right away lets the two refusals (each after the client's 1 s + 2 s retries) overlap
    scenario = unique("cors")
    send(page, f"tokens=5 id={scenario}")
    assert wait_finished(page) == "error"
    kind, text = error_shown(page)
    assert kind == "network" and "CORS" in text, text
    assert text_of(page, "#output") == "" and text_of(page, "#tokens") == "0"
    assert upstream.requests(id=scenario) == []  # the preflight failed: the POST never left the browser
    assert any("CORS policy" in m for m in page.console_messages_seen), page.console_messages_seen


def test_a_pinned_profile_keeps_its_system_prompt_and_a_free_one_takes_the_pages(
    servers: Servers, page: Any, upstream: FakeUpstreamProcess
) -> None:
    open_demo(page, servers.page_url(provider="profiles/support"))
    sign_in(page, unique("profiles"))
    wait_models_loaded(page)
    assert page.input_value("#provider") == "profiles/support"
    assert "profile: free (anthropic)" in text_of(page, "#provider")
    rid = unique("pinned")
    send(page, f"tokens=3 id={rid}")
    assert wait_finished(page) == "done", error_shown(page)
    assert upstream.requests(id=rid)[0]["body"]["system"] == PINNED

    page.click("#system-box summary")
    page.fill("#system", "Write poems instead.")
    refused = unique("refused")
    send(page, f"tokens=3 id={refused}")
    assert wait_finished(page) == "error"
    assert "may not set a system prompt" in error_shown(page)[1]
    assert upstream.requests(id=refused) == []

    page.select_option("#provider", "profiles/free")
    rid = unique("free")
    send(page, f"tokens=3 id={rid}")
    assert wait_finished(page) == "done", error_shown(page)
    assert upstream.requests(id=rid)[0]["body"]["system"] == "Write poems instead."
