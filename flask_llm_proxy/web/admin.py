"""The operator page (``LLM_PROXY_ADMIN``): ``<prefix>/admin`` and the figures behind it.

The page itself is a static shell with no data in it, served to anyone with a strict
Content-Security-Policy (scripts, styles and fetches from this origin only, nothing inline, no
frames); its script asks ``<prefix>/admin/summary.json`` for the figures, sending the operator's
token (pasted into the page, kept in the tab's ``sessionStorage``) or the host's JWT cookie, and
only that request is checked (:mod:`..access.admin`). ``summary.csv`` is the same table as a file.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
from typing import Any

from flask import Blueprint, Response, request

from .. import _json
from .._compat import run_blocking
from ..access.admin import require_admin
from ..accounting.report import RangeError, parse_range, summarize_range, to_csv
from ..config import Settings
from ..errors import InvalidRequest, ServiceUnavailable
from .flow import state

log = logging.getLogger("flask_llm_proxy")

ADMIN_STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static", "admin")

#: the page's policy: its own script, style and data only; nothing inline, nothing from elsewhere
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DATA_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
_LEDGERS = {"SQLiteStore": "sqlite", "RedisStore": "redis", "NullStore": "none"}


def _page_html(settings: Settings) -> bytes:
    """The shell with its asset URLs filled in once (the prefix, and a content hash so a new
    version of the script is never taken from a browser's cache)."""
    digest = hashlib.sha256()
    for name in ("admin.js", "admin.css"):
        with open(os.path.join(ADMIN_STATIC, name), "rb") as f:
            digest.update(f.read())
    with open(os.path.join(ADMIN_STATIC, "index.html"), encoding="utf-8") as f:
        page = f.read()
    page = page.replace("{{static}}", html.escape(f"{settings.url_prefix}/static/admin", quote=True))
    page = page.replace("{{version}}", digest.hexdigest()[:12])
    page = page.replace("{{api}}", html.escape(f"{settings.url_prefix}/admin", quote=True))
    return page.encode()


def _secure(resp: Response, csp: str) -> Response:
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["Cache-Control"] = "no-store"
    for k, v in SECURITY_HEADERS.items():
        resp.headers[k] = v
    return resp


def _summary() -> dict[str, Any]:
    st = state()
    require_admin(st.settings, st.hooks.admin_required)
    args = request.args
    try:
        rng = parse_range(args.get("range"), args.get("since"), args.get("until"))
    except RangeError as exc:
        raise InvalidRequest(f"{exc.param}: {exc.message}", extra={"param": exc.param}) from None
    top_arg = args.get("top", "10")
    if not top_arg.isdigit() or not 1 <= int(top_arg) <= 100:
        raise InvalidRequest(f"top: expected a number of users from 1 to 100, got {top_arg!r}", extra={"param": "top"})
    store = st.accounting.store

    def compute() -> dict[str, Any]:
        return summarize_range(store, rng, budgets=st.settings.budgets, top=int(top_arg))

    try:
        summary = run_blocking(compute) if store.blocking else compute()
    except Exception as exc:  # noqa: BLE001 - the operator is told; the details go to the log
        log.error("operator summary: the usage store could not be read (%s: %s)", type(exc).__name__, exc)
        raise ServiceUnavailable(
            "the usage ledger cannot be read right now; try again shortly", type="ledger_unavailable", headers={"Retry-After": "5"}
        ) from None
    summary["ledger"] = _LEDGERS.get(type(store).__name__, type(store).__name__)
    return summary


def summary_json() -> Response:
    return _secure(Response(_json.dumps(_summary()), mimetype="application/json"), DATA_CSP)


def summary_csv() -> Response:
    summary = _summary()
    resp = Response(to_csv(summary), mimetype="text/csv")
    r = summary["range"]
    name = f"llm-proxy-{r['name']}-{r['since'][:10]}-{r['until'][:10]}.csv"
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return _secure(resp, DATA_CSP)


def register_admin(bp: Blueprint, settings: Settings) -> None:
    page = _page_html(settings)

    def admin_page() -> Response:
        return _secure(Response(page, mimetype="text/html"), PAGE_CSP)

    bp.add_url_rule("/admin", endpoint="admin_page", view_func=admin_page, methods=["GET"])
    bp.add_url_rule("/admin/summary.json", endpoint="admin_summary", view_func=summary_json, methods=["GET"])
    bp.add_url_rule("/admin/summary.csv", endpoint="admin_summary_csv", view_func=summary_csv, methods=["GET"])
