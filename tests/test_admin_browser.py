"""The operator page in Debian's chromium (Playwright, headless), against the example app under
gunicorn with LLM_PROXY_ADMIN on and a SQLite ledger seeded before it starts.

What is checked: the page refuses to show anything without a token and with a token that lacks
the claim; with an operator's token every chart has one bar (or point) per non-zero figure, and
each one's tooltip, the totals, the tables and the CSV export hold the figures tests/admin_seed.py
computes from the same records on its own; and the browser asks nothing of any other origin
(every request is routed through a handler that fails the test on a foreign one).

The screenshot of the page goes to docs/_static/admin.png.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from admin_seed import bucket_label, expected, seed
from conftest import ROOT, GunicornServer, base_env, make_jwt, screenshot

from flask_llm_proxy.accounting.exchange import UsageRecord
from flask_llm_proxy.accounting.sqlite_store import SQLiteStore

playwright_sync = pytest.importorskip("playwright.sync_api")
from test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 - after the skip when playwright is missing

SCREENSHOT = ROOT / "docs" / "_static" / "admin.png"


class Site:
    def __init__(self, server: GunicornServer, records: list[dict[str, Any]], now: float) -> None:
        self.server = server
        self.records = records
        self.now = now
        self.origin = server.url


@pytest.fixture(scope="module")
def site(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("admin-page")
    now = time.time()
    records = seed(now)
    store = SQLiteStore(str(tmp / "usage.sqlite3"))  # the ledger base_env points the app at
    for r in records:
        store.write(UsageRecord(**r))
    server = GunicornServer(base_env(upstream.base_url, tmp, LLM_PROXY_ADMIN=True), workers=1, name="admin")
    yield Site(server, records, now)
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    """A fresh context per test; every request must stay on the app's origin."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    foreign: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:" + site.origin)) or f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" == site.origin:
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    ctx.route("**/*", guard)
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text and "403" not in m.text else None)
    yield pg
    ctx.close()
    assert foreign == [], f"the page asked another origin for {foreign}"
    assert errors == [], errors


def open_page(page: Any, site: Site, fragment: str = "") -> str:
    page.goto(f"{site.origin}/api/admin{fragment}")
    page.wait_for_selector("body[data-ready='1']")
    return page.get_attribute("#status", "data-state")


def sign_in(page: Any, token: str) -> str:
    page.fill("#token", token)
    page.click("#token-form button")  # the page's handler marks the status 'loading' before the click returns
    # selectors, not wait_for_function: the page's policy forbids the eval that one needs
    page.wait_for_selector("#status:not([data-state='loading'])")
    return page.get_attribute("#status", "data-state")


def show(page: Any, range_: str) -> None:
    page.click(f"#ranges [data-range='{range_}']")
    page.wait_for_selector(f"#ranges [data-range='{range_}'][aria-pressed='true']")
    page.wait_for_selector("#status[data-state='ready']")


def marks(page: Any, chart: str, kind: str = "rect.bar") -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        f"figure[data-chart='{chart}'] {kind}",
        "els => els.map(e => ({bucket: e.dataset.bucket, series: e.dataset.series, value: e.dataset.value,"
        " title: e.querySelector('title').textContent}))",
    )


def bars_expected(want: dict[str, Any], value: Any, fmt: Any) -> list[dict[str, str]]:
    """One mark per (bucket, series) with a non-zero value, in the page's order: buckets, then series."""
    out = []
    for bucket, fig in want["buckets"].items():
        for series, v in value(fig):
            if v:
                out.append({"bucket": bucket, "series": series, "value": str(v), "title": f"{bucket} · {series}: {fmt(v)}"})
    return out


def day_labels(now: float, days: int) -> list[str]:
    today = math.floor(now / 86400)
    return [bucket_label((today - days + 1 + i) * 86400, "day") for i in range(days)]


def hour_labels(now: float, hours: int) -> list[str]:
    h = math.floor(now / 3600)
    return [bucket_label((h - hours + 1 + i) * 3600, "hour") for i in range(hours)]


def js_num(v: float) -> str:
    """How the page's data-value attributes print a number (JavaScript's String(n))."""
    return str(int(v)) if float(v).is_integer() else repr(v)


def check_charts(page: Any, want: dict[str, Any]) -> None:
    total = want["total"]
    models = [m for m, _ in sorted(total["by_model"].items(), key=lambda kv: (-kv[1]["cost_usd"], -kv[1]["requests"], kv[0]))]
    assert marks(page, "requests") == bars_expected(
        want, lambda f: [(m, f["by_model"].get(m, {}).get("requests", 0)) for m in models], lambda v: f"{v:,} requests"
    )
    assert marks(page, "tokens") == bars_expected(
        want,
        lambda f: [
            (m, (f["by_model"][m]["input_tokens"] + f["by_model"][m]["output_tokens"]) if m in f["by_model"] else 0) for m in models
        ],
        lambda v: f"{v:,} tokens",
    )
    cost = bars_expected(want, lambda f: [(m, f["by_model"].get(m, {}).get("cost_usd", 0)) for m in models], lambda v: f"{v:.6f} USD")
    for c in cost:
        c["value"] = js_num(float(c["value"]))
    assert marks(page, "cost") == cost
    assert marks(page, "users") == bars_expected(want, lambda f: [("active users", f["active_users"])], lambda v: f"{v:,} active users")
    types = [t for t, _ in sorted(total["errors_by_type"].items(), key=lambda kv: (-kv[1], kv[0]))]
    assert marks(page, "errors") == bars_expected(
        want, lambda f: [(t, f["errors_by_type"].get(t, 0)) for t in types], lambda v: f"{v:,} errors"
    )
    assert marks(page, "cancelled") == bars_expected(want, lambda f: [("cancelled", f["cancelled"])], lambda v: f"{v:,} cancelled")
    assert marks(page, "cached") == bars_expected(want, lambda f: [("cache hits", f["cached"])], lambda v: f"{v:,} cache hits")
    assert marks(page, "worker_lost") == bars_expected(want, lambda f: [("worker lost", f["worker_lost"])], lambda v: f"{v:,} lost")
    assert page.is_hidden("figure[data-chart='queue']")  # no record carries a queue wait yet
    points = []
    for series_of in sorted(total["ttfb"]):
        for q in ("p50", "p95"):
            for bucket, fig in want["buckets"].items():
                t = fig["ttfb"].get(series_of)
                if t:
                    v = t[f"{q}_ms"]
                    points.append(
                        {"bucket": bucket, "series": f"{series_of} {q}", "value": str(v), "title": f"{bucket} · {series_of} {q}: {v} ms"}
                    )
    assert marks(page, "ttfb", "circle.point") == points
    assert len(points) > 4


def check_numbers(page: Any, want: dict[str, Any], labels: list[str]) -> None:
    total = want["total"]
    kpi = dict(page.eval_on_selector_all("[data-kpi]", "els => els.map(e => [e.dataset.kpi, e.dataset.value])"))
    assert kpi["requests"] == str(total["requests"]) and kpi["active_users"] == str(total["active_users"])
    assert kpi["input_tokens"] == str(total["input_tokens"]) and kpi["output_tokens"] == str(total["output_tokens"])
    assert float(kpi["cost_usd"]) == pytest.approx(total["cost_usd"], abs=1e-9)
    assert kpi["cancelled"] == str(total["cancelled"])
    # shown once there is something to show (write-ahead records, a cache)
    assert kpi.get("worker_lost") == (str(total["worker_lost"]) if total["worker_lost"] else None)
    assert kpi.get("cache_hit_rate") == (str(round(total["cached"] / total["requests"], 4)) if total["cached"] else None)
    for p, t in total["ttfb"].items():
        assert (kpi[f"ttfb_p50:{p}"], kpi[f"ttfb_p95:{p}"]) == (str(t["p50_ms"]), str(t["p95_ms"]))
    table = page.eval_on_selector_all(
        "#table tbody tr", "rows => rows.map(r => Object.fromEntries([...r.cells].map(c => [c.dataset.column, c.textContent])))"
    )
    assert [row["bucket"] for row in table] == labels
    for row in table:
        w = want["buckets"][row["bucket"]]
        assert (int(row["requests"]), int(row["active_users"]), int(row["errors"]), int(row["cancelled"])) == (
            w["requests"],
            w["active_users"],
            w["errors"],
            w["cancelled"],
        )
        assert float(row["cost_usd"]) == pytest.approx(w["cost_usd"], abs=1e-9)
    users = page.eval_on_selector_all(
        "#top-users tbody tr", "rows => rows.map(r => [r.dataset.identity, r.cells[1].dataset.value, r.cells[3].dataset.value])"
    )
    ranked = sorted(want["users"].items(), key=lambda kv: (-kv[1]["cost_usd"], -kv[1]["requests"], kv[0]))
    assert [u[0] for u in users] == [k for k, _ in ranked]
    for identity, requests, cost in users:
        assert int(requests) == want["users"][identity]["requests"] and float(cost) == pytest.approx(
            want["users"][identity]["cost_usd"], abs=1e-9
        )
    assert page.eval_on_selector("#top-users", "t => t.querySelector('b') === null")  # an identity is text, never markup


def test_the_page_refuses_without_a_token_and_without_the_claim(page: Any, site: Site) -> None:
    assert open_page(page, site) == "signin"
    assert page.is_visible("#signin") and page.is_hidden("#report")
    assert sign_in(page, make_jwt("mallory")) == "refused"
    assert "does not open the operator page" in page.text_content("#signin-msg")
    assert page.is_hidden("#report") and page.eval_on_selector_all("figure svg", "s => s.length") == 0
    assert sign_in(page, "not-a-jwt") == "signin"  # a broken token is anonymous again, and told so
    assert "token" in page.text_content("#signin-msg")


def test_charts_tooltips_and_tables_match_the_seeded_ledger(page: Any, site: Site) -> None:
    assert open_page(page, site) == "signin"
    assert sign_in(page, make_jwt("ops", llm_proxy_admin=True)) == "ready"

    labels = day_labels(site.now, 7)  # the page opens on 7 days
    want = expected(site.records, "day", labels)
    assert want["total"]["worker_lost"] and want["total"]["cached"] and want["total"]["cancelled"]
    check_charts(page, want)
    check_numbers(page, want, labels)
    screenshot(page, "admin.png", SCREENSHOT)

    with page.expect_download() as dl:
        page.click("#csv")
    rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text())))
    assert rows[0][:3] == ["bucket", "requests", "active_users"] and [r[0] for r in rows[1:]] == labels
    assert [int(r[1]) for r in rows[1:]] == [want["buckets"][b]["requests"] for b in labels]

    show(page, "24h")
    hours = hour_labels(site.now, 24)
    want24 = expected(site.records, "hour", hours)
    assert len(page.query_selector_all("#table tbody tr")) == 24
    check_charts(page, want24)
    check_numbers(page, want24, hours)

    show(page, "30d")
    days = day_labels(site.now, 30)
    want30 = expected(site.records, "day", days)
    check_charts(page, want30)
    check_numbers(page, want30, days)


def test_a_custom_range_and_a_reload_keep_the_range(page: Any, site: Site) -> None:
    days = day_labels(site.now, 10)[:8]
    open_page(page, site, f"#since={days[0]}&until={days[-1]}")
    assert sign_in(page, make_jwt("ops", llm_proxy_admin=True)) == "ready"
    assert [r for r in page.eval_on_selector_all("#table tbody tr", "rows => rows.map(r => r.cells[0].textContent)")] == days
    check_charts(page, expected(site.records, "day", days))
