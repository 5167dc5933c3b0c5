"""The operator page's JSON API, CSV and CLI report (LLM_PROXY_ADMIN), on the SQLite and Redis stores.

Records are written straight into each store; every figure is compared with what
tests/admin_seed.py computes from the same records on its own.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_seed import bucket_label, expected, seed
from conftest import make_jwt, mock_host_app

from flask_llm_proxy import LLMProxy
from flask_llm_proxy.accounting.exchange import UsageRecord
from flask_llm_proxy.accounting.sqlite_store import SQLiteStore

ADMIN = {"Authorization": "Bearer " + make_jwt("ops", llm_proxy_admin=True, expires_in=3600)}


def admin_headers(sub: str = "ops", **claims: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + make_jwt(sub, **claims)}


def to_record(r: dict[str, Any]) -> UsageRecord:
    return UsageRecord(**r)


@pytest.fixture(params=["sqlite", "redis"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(name, LLM_PROXY_USAGE_STORE) of an empty ledger of each kind."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        yield "redis", server.url


def admin_app(store_uri: str, **config: Any) -> tuple[Any, LLMProxy]:
    app = mock_host_app(LLM_PROXY_ADMIN=True, LLM_PROXY_USAGE_STORE=store_uri, LLM_PROXY_RATE_LIMIT=None, **config)
    proxy = LLMProxy(app)
    return app, proxy


def write_all(app: Any, records: list[dict[str, Any]]) -> None:
    store = app.extensions["llm_proxy"].accounting.store
    for r in records:
        store.write(to_record(r))


def day_labels(now: float, days: int) -> list[str]:
    today = math.floor(now / 86400)
    return [bucket_label((today - days + 1 + i) * 86400, "day") for i in range(days)]


def hour_labels(now: float, hours: int) -> list[str]:
    h = math.floor(now / 3600)
    return [bucket_label((h - hours + 1 + i) * 3600, "hour") for i in range(hours)]


def check(summary: dict[str, Any], want: dict[str, Any], labels: list[str]) -> None:
    tot = want["total"]
    for key in ("requests", "active_users", "input_tokens", "output_tokens", "unpriced", "errors", "cancelled", "cached", "worker_lost"):
        assert summary[key] == tot[key], key
    assert summary["cost_usd"] == pytest.approx(tot["cost_usd"], abs=1e-9)
    assert summary["errors_by_type"] == tot["errors_by_type"]
    assert summary["error_rate"] == (round(tot["errors"] / tot["requests"], 4) if tot["requests"] else None)
    assert summary["ttfb_by_provider"] == tot["ttfb"]
    assert {m["model"]: {k: m[k] for k in ("requests", "input_tokens", "output_tokens", "cost_usd")} for m in summary["by_model"]} == tot[
        "by_model"
    ]
    series = summary["by_hour"] if summary["range"]["grain"] == "hour" else summary["by_day"]
    assert [b["bucket"] for b in series] == labels
    for b in series:
        w = want["buckets"][b["bucket"]]
        for key in ("requests", "active_users", "input_tokens", "output_tokens", "errors", "cancelled", "cached", "worker_lost"):
            assert b[key] == w[key], (b["bucket"], key)
        assert b["cost_usd"] == pytest.approx(w["cost_usd"], abs=1e-9)
        assert b["errors_by_type"] == w["errors_by_type"]
        assert b["by_model"] == w["by_model"]
        assert b["ttfb"] == w["ttfb"]
    users = want["users"]
    ranked = sorted(users.items(), key=lambda kv: (-kv[1]["cost_usd"], -kv[1]["requests"], kv[0]))
    assert [u["identity"] for u in summary["top_users"]] == [k for k, _ in ranked][:10]
    for u in summary["top_users"]:
        w = users[u["identity"]]
        assert (u["requests"], u["tokens"]) == (w["requests"], w["tokens"])
        assert u["cost_usd"] == pytest.approx(w["cost_usd"], abs=1e-9)
        assert u["share_of_cost"] == pytest.approx(w["cost_usd"] / tot["cost_usd"], abs=1e-4)


@pytest.mark.parametrize("big_ttfb", [False, True], ids=["ttfb-under-128ms", "ttfb-binned"])
def test_summary_json_matches_the_seeded_ledger_for_every_range(ledger: tuple[str, str], big_ttfb: bool) -> None:
    name, uri = ledger
    now = time.time()
    records = seed(now, big_ttfb=big_ttfb)
    app, _ = admin_app(uri)
    write_all(app, records)
    client = app.test_client()
    for query, grain, labels in (
        ("range=7d", "day", day_labels(now, 7)),
        ("range=30d", "day", day_labels(now, 30)),
        ("range=24h", "hour", hour_labels(now, 24)),
        (f"since={day_labels(now, 9)[0]}&until={day_labels(now, 3)[0]}", "day", day_labels(now, 9)[:7]),
    ):
        r = client.get(f"/api/admin/summary.json?{query}", headers=ADMIN)
        assert r.status_code == 200, r.get_json()
        s = r.get_json()
        assert s["ledger"] == name and s["range"]["grain"] == grain and s["range"]["buckets"] == len(labels)
        want = expected(records, grain, labels)
        assert want["total"]["requests"] > 0
        check(s, want, labels)
        if grain == "hour":  # the same hours, summed by day
            assert sum(d["requests"] for d in s["by_day"]) == s["requests"]
            users_per_day: dict[str, set[str]] = {}
            for rec in records:
                if bucket_label(rec["timestamp"], "hour") in labels:
                    users_per_day.setdefault(bucket_label(rec["timestamp"], "day"), set()).add(rec["identity"])
            assert {d["bucket"]: d["active_users"] for d in s["by_day"] if d["requests"]} == {k: len(v) for k, v in users_per_day.items()}


def test_sqlite_and_redis_give_the_same_summary(tmp_path: Path, redis_server: Any) -> None:
    redis_server.flush()
    now = time.time()
    records = seed(now, big_ttfb=True)
    answers = []
    for uri in (f"sqlite:///{tmp_path / 'same.sqlite3'}", redis_server.url):
        app, _ = admin_app(uri)
        write_all(app, records)
        s = app.test_client().get("/api/admin/summary.json?range=30d", headers=ADMIN).get_json()
        answers.append({k: v for k, v in s.items() if k not in ("ledger", "generated_at")})
    assert answers[0] == answers[1]


def test_the_top_users_carry_their_share_of_budget_in_the_current_period(ledger: tuple[str, str]) -> None:
    _, uri = ledger
    now = time.time()
    app, _ = admin_app(uri, LLM_PROXY_BUDGETS={"default": {"daily_usd": 0.001}, "alice": {"monthly_tokens": 100000}, "bob": {}})
    records = [dict(r, timestamp=now - 30 - i) for i, r in enumerate(seed(now)[:5])]  # all of them today
    write_all(app, records)
    s = app.test_client().get("/api/admin/summary.json?range=24h", headers=ADMIN).get_json()
    users = {u["identity"]: u for u in s["top_users"]}
    spent: dict[str, dict[str, float]] = {}
    for r in records:
        sp = spent.setdefault(r["identity"], {"usd": 0.0, "tokens": 0})
        sp["usd"] += r["cost_usd"] or 0
        sp["tokens"] += r["input_tokens"] + r["output_tokens"]
    assert users["alice"]["budget"] == {
        "monthly_tokens": {"limit": 100000, "spent": spent["alice"]["tokens"], "share": round(spent["alice"]["tokens"] / 100000, 4)}
    }
    assert users["bob"]["budget"] is None and users["bob"]["budget_share"] is None  # exempt from the default
    carol = users["carol"]["budget"]["daily_usd"]
    assert carol["spent"] == pytest.approx(spent["carol"]["usd"]) and users["carol"]["budget_share"] == round(
        spent["carol"]["usd"] / 0.001, 4
    )


def test_records_that_arrive_late_or_from_two_processes_are_counted_once_in_sqlite(tmp_path: Path) -> None:
    """The rollup takes rows by rowid: a long stream's record (dated when it began) written after a
    summary still counts, and two processes summarizing at once never count a row twice."""
    db = tmp_path / "late.sqlite3"
    now = time.time()
    records = seed(now)
    app, _ = admin_app(f"sqlite:///{db}")
    write_all(app, records[:20])
    client = app.test_client()
    assert client.get("/api/admin/summary.json?range=30d", headers=ADMIN).get_json()["requests"] == len(
        [r for r in records[:20] if bucket_label(r["timestamp"], "day") in day_labels(now, 30)]
    )
    write_all(app, records[20:])  # among them records dated days ago
    stores = [SQLiteStore(str(db)) for _ in range(4)]
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda s=s: answers.append(sum(c["requests"] for c in s.aggregates("day", 0, 10**6).models.values())))
        for s in stores
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [len(records)] * 4
    s = client.get("/api/admin/summary.json?range=30d", headers=ADMIN).get_json()
    check(s, expected(records, "day", day_labels(now, 30)), day_labels(now, 30))


def test_queue_waits_light_up_when_records_carry_them(ledger: tuple[str, str]) -> None:
    """Records of requests that waited for a slot (LLM_PROXY_MAX_CONCURRENT) carry queue_ms;
    the others (None) are not counted as queued."""
    _, uri = ledger
    now = time.time()
    waits = [5.0, 12.0, 300.4, 40.0, None]
    app, _ = admin_app(uri)
    store = app.extensions["llm_proxy"].accounting.store
    for i, (r, w) in enumerate(zip(seed(now), waits, strict=False)):
        store.write(UsageRecord(**dict(r, timestamp=now - 60 - i), queue_ms=w))
    s = app.test_client().get("/api/admin/summary.json?range=24h", headers=ADMIN).get_json()
    # binned: 300.4 -> 300 ms rounds to 7 significant bits: 300 = 0b100101100 -> steps of 4 -> 300
    assert s["queue"] == {"count": 4, "p50_ms": 12, "p95_ms": 300}
    assert sum(b["queue"]["count"] for b in s["by_hour"]) == 4


# --- access --------------------------------------------------------------------------------------


def test_the_page_and_its_api_are_off_unless_turned_on(tmp_path: Path) -> None:
    app = mock_host_app(LLM_PROXY_USAGE_STORE="none", LLM_PROXY_RATE_LIMIT=None)
    LLMProxy(app)
    c = app.test_client()
    for path in ("/api/admin", "/api/admin/summary.json"):
        r = c.get(path, headers=ADMIN)
        assert r.status_code == 404 and r.get_json()["type"] == "not_found"


def test_anonymous_is_401_and_a_token_without_the_claim_is_403(tmp_path: Path) -> None:
    app, _ = admin_app("none")
    c = app.test_client()
    for path in ("/api/admin/summary.json", "/api/admin/summary.csv"):
        r = c.get(path)
        assert r.status_code == 401 and r.get_json()["type"] == "authentication_error"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for claims in ({}, {"llm_proxy_admin": False}, {"llm_proxy_admin": "true"}, {"llm_proxy_admin": 1}, {"is_admin": True}):
            r = c.get(path, headers=admin_headers(**claims))
            assert r.status_code == 403 and r.get_json()["type"] == "permission_denied", claims
    expired = {"Authorization": "Bearer " + make_jwt("ops", llm_proxy_admin=True, expires_in=-10)}
    forged = {"Authorization": "Bearer " + make_jwt("ops", llm_proxy_admin=True, secret="not-the-key-of-this-app-at-all-32b")}
    assert c.get("/api/admin/summary.json", headers=expired).get_json()["error"] == "the token has expired"
    assert c.get("/api/admin/summary.json", headers=forged).status_code == 401
    assert c.get("/api/admin/summary.json", headers=ADMIN).status_code == 200


def test_the_claim_name_is_configurable_and_none_leaves_only_the_callback(tmp_path: Path) -> None:
    app, _ = admin_app("none", LLM_PROXY_ADMIN_CLAIM="ops")
    c = app.test_client()
    assert c.get("/api/admin/summary.json", headers=admin_headers(ops=True)).status_code == 200
    assert c.get("/api/admin/summary.json", headers=ADMIN).status_code == 403
    app, _ = admin_app("none", LLM_PROXY_ADMIN_CLAIM=None)
    assert app.test_client().get("/api/admin/summary.json", headers=ADMIN).status_code == 403


def test_the_host_callback_decides_instead_of_the_claim(tmp_path: Path) -> None:
    app, proxy = admin_app("none")
    seen: list[tuple[Any, dict[str, Any]]] = []

    @proxy.admin_required  # registered after init_app: applies all the same
    def allow(identity: str | None, claims: dict[str, Any]) -> bool:
        seen.append((identity, claims))
        return identity == "root" or claims.get("role") == "ops"

    c = app.test_client()
    assert c.get("/api/admin/summary.json", headers=admin_headers("root")).status_code == 200
    assert c.get("/api/admin/summary.json", headers=admin_headers("eve", role="ops")).status_code == 200
    assert c.get("/api/admin/summary.json", headers=ADMIN).status_code == 403  # the claim alone no longer opens it
    assert c.get("/api/admin/summary.json").status_code == 401
    assert seen[0][0] == "root" and seen[1][1]["role"] == "ops" and seen[-1] == (None, {})

    # a host that signs its operators in another way (a session) admits them without a token
    proxy.admin_required(lambda identity, claims: True)
    assert c.get("/api/admin/summary.json").status_code == 200


def test_a_jwt_cookie_opens_the_api_when_the_host_uses_cookies(tmp_path: Path) -> None:
    app, _ = admin_app("none", JWT_TOKEN_LOCATION=["headers", "cookies"])
    c = app.test_client()
    c.set_cookie("access_token_cookie", make_jwt("ops", llm_proxy_admin=True))
    assert c.get("/api/admin/summary.json").status_code == 200
    c.set_cookie("access_token_cookie", make_jwt("ops"))
    assert c.get("/api/admin/summary.json").status_code == 403


def test_the_page_is_a_static_shell_under_a_strict_policy_and_gets_no_cors(tmp_path: Path) -> None:
    app, _ = admin_app("none", LLM_PROXY_CORS_ORIGINS=["https://app.example.org"])
    c = app.test_client()
    r = c.get("/api/admin")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    page = r.get_data(as_text=True)
    assert "<script>" not in page and "style=" not in page and "http" not in page.replace("http://www.w3.org", "")
    assert 'src="/api/static/admin/admin.js?v=' in page
    assert c.get("/api/static/admin/admin.js").status_code == 200
    origin = {"Origin": "https://app.example.org"}
    assert "Access-Control-Allow-Origin" not in c.get("/api/admin/summary.json", headers={**ADMIN, **origin}).headers
    assert "Access-Control-Allow-Origin" not in c.get("/api/admin", headers=origin).headers
    assert c.get("/api/models", headers=origin).headers["Access-Control-Allow-Origin"] == "https://app.example.org"


@pytest.mark.parametrize(
    "query, param",
    [
        ("range=1y", "range"),
        ("range=0d", "range"),
        ("range=401d", "range"),
        ("range=73h", "range"),
        ("since=2026-13-01", "since"),
        ("until=2026-01-01", "since"),
        ("since=2026-02-01&until=2026-01-01", "until"),
        ("range=7d&since=2026-01-01", "range"),
        ("since=2020-01-01&until=2026-01-01", "since"),
        ("top=0", "top"),
        ("top=x", "top"),
    ],
)
def test_a_bad_range_is_a_400_naming_the_parameter(query: str, param: str) -> None:
    app, _ = admin_app("none")
    r = app.test_client().get(f"/api/admin/summary.json?{query}", headers=ADMIN)
    assert r.status_code == 400 and r.get_json()["type"] == "invalid_request" and r.get_json()["param"] == param
    assert r.get_json()["error"].startswith(f"{param}: ")


def test_an_unreadable_ledger_is_a_503_not_a_500(tmp_path: Path) -> None:
    app, _ = admin_app("redis://127.0.0.1:9/0")  # nothing listens there
    r = app.test_client().get("/api/admin/summary.json", headers=ADMIN)
    assert r.status_code == 503 and r.get_json()["type"] == "ledger_unavailable" and "127.0.0.1" not in r.get_json()["error"]


# --- CSV and the CLI -----------------------------------------------------------------------------


def test_the_csv_export_is_the_table_of_the_json(ledger: tuple[str, str]) -> None:
    _, uri = ledger
    now = time.time()
    records = seed(now)
    app, _ = admin_app(uri)
    write_all(app, records)
    c = app.test_client()
    s = c.get("/api/admin/summary.json?range=7d", headers=ADMIN).get_json()
    r = c.get("/api/admin/summary.csv?range=7d", headers=ADMIN)
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="llm-proxy-7d-')
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0] == s["table"]["columns"]
    assert [row[0] for row in rows[1:]] == day_labels(now, 7)
    want = expected(records, "day", day_labels(now, 7))
    for row in rows[1:]:
        rec = dict(zip(rows[0], row, strict=False))
        w = want["buckets"][rec["bucket"]]
        assert int(rec["requests"]) == w["requests"] and float(rec["cost_usd"]) == pytest.approx(w["cost_usd"], abs=1e-9)
        assert rec["ttfb_p95_ms:anthropic"] == str(w["ttfb"].get("anthropic", {}).get("p95_ms", "") or "")


def test_cli_report_prints_the_same_figures(ledger: tuple[str, str]) -> None:
    _, uri = ledger
    now = time.time()
    records = seed(now)
    app, _ = admin_app(uri)
    write_all(app, records)
    from flask_llm_proxy.cli import cli

    runner = app.test_cli_runner()
    as_json = runner.invoke(cli, ["report", "--range", "7d", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    s = json.loads(as_json.output)
    check(s, expected(records, "day", day_labels(now, 7)), day_labels(now, 7))
    text = runner.invoke(cli, ["report", "--range", "7d"]).output
    want = expected(records, "day", day_labels(now, 7))["total"]
    assert f"requests        {want['requests']}   active users {want['active_users']}" in text
    top = s["top_users"][0]
    assert any(line.split()[:3] == [top["identity"], str(top["requests"]), str(top["tokens"])] for line in text.splitlines())
    csv_out = runner.invoke(cli, ["report", "--since", day_labels(now, 7)[0], "--format", "csv"]).output
    assert csv_out.splitlines()[0].startswith("bucket,requests,active_users")
    bad = runner.invoke(cli, ["report", "--range", "9y"])
    assert bad.exit_code == 2 and "'--range'" in bad.output


def test_a_wrong_admin_setting_names_its_key() -> None:
    from flask_llm_proxy.errors import ConfigError

    for key, value in (("LLM_PROXY_ADMIN", "maybe"), ("LLM_PROXY_ADMIN_CLAIM", 5)):
        app = mock_host_app(**{key: value})
        with pytest.raises(ConfigError, match=key):
            LLMProxy(app)
