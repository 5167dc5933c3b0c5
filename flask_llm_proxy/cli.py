"""``flask llm-proxy ...``: read the usage ledger and check the configuration.

Registered through the ``flask.commands`` entry point, so it is there in any app that uses the
extension: ``flask --app yourapp llm-proxy usage --since 1d --by identity``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import click
import requests
from flask import current_app
from flask.cli import AppGroup

from .accounting.report import RangeError, parse_range, summarize_range, to_csv, to_text
from .accounting.store import summarize

cli = AppGroup("llm-proxy", help="flask-llm-proxy: usage reports and configuration checks.")

_SINCE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str) -> float:
    """``30m``, ``12h``, ``1d``, ``2w`` ago, or an ISO date/time (UTC), as epoch seconds.

    A start before 1970 is 1970 (no record is older; a negative start is a Redis error); an
    amount that reaches past any date, or anything else, is a usage error, never a traceback."""
    from datetime import datetime, timedelta, timezone

    hint = "use e.g. 30m, 12h, 1d, 2w or 2026-11-01"
    m = _SINCE_RE.match(value.strip())
    try:
        if m:
            dt = datetime.now(timezone.utc) - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
        else:
            dt = datetime.fromisoformat(value)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
        start = dt.timestamp()
    except OverflowError:  # timedelta or date arithmetic beyond the year 1 (or 9999)
        raise click.BadParameter(f"{value!r} goes back past the year 1; {hint}", param_hint="'--since'") from None
    except ValueError:
        raise click.BadParameter(f"{value!r}: {hint}", param_hint="'--since'") from None
    return max(0.0, start)


def _state() -> Any:
    state = current_app.extensions.get("llm_proxy")
    if state is None:
        raise click.ClickException("this app does not use flask-llm-proxy (no LLMProxy(app))")
    return state


def format_table(rows: list[dict[str, Any]], by: str) -> str:
    header = [by, "requests", "input_tokens", "output_tokens", "cost_usd", "estimated", "errors"]
    lines = [header]
    total = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "estimated": 0, "errors": 0, "unpriced": 0}
    for r in rows:
        cost = f"{r['cost_usd']:.6f}" + ("*" if r["unpriced"] else "")
        lines.append(
            [r[by], str(r["requests"]), str(r["input_tokens"]), str(r["output_tokens"]), cost, str(r["estimated"]), str(r["errors"])]
        )
        for k in total:
            total[k] += r[k]
    lines.append(
        [
            "TOTAL",
            str(total["requests"]),
            str(total["input_tokens"]),
            str(total["output_tokens"]),
            f"{total['cost_usd']:.6f}" + ("*" if total["unpriced"] else ""),
            str(total["estimated"]),
            str(total["errors"]),
        ]
    )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0 or n == len(lines) - 2:
            out.append("  ".join("-" * w for w in widths))
    if total["unpriced"]:
        out.append("* some requests used a model without a price (cost unknown, counted as 0)")
    return "\n".join(out)


@cli.command("usage")
@click.option("--since", default="1d", show_default=True, help="How far back: 30m, 12h, 1d, 2w, or an ISO date.")
@click.option("--by", type=click.Choice(["identity", "model", "provider", "deployment"]), default="identity", show_default=True)
def usage_command(since: str, by: str) -> None:
    """Requests, tokens and cost per identity (or model) from the usage ledger."""
    start = parse_since(since)
    rows = summarize(_state().accounting.store.records(start), by)
    if not rows:
        click.echo(f"no requests since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start))} UTC")
        return
    click.echo(format_table(rows, by))


@cli.command("report")
@click.option("--range", "range_", default=None, help="24h, 7d, 30d (<n>h up to 72, <n>d up to 400); default 7d.")
@click.option("--since", default=None, help="First UTC day of a custom range (YYYY-MM-DD).")
@click.option("--until", default=None, help="Last UTC day of a custom range, included (default today).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 100), help="How many users to list.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
def report_command(range_: str | None, since: str | None, until: str | None, top: int, fmt: str) -> None:
    """The operator page's figures (LLM_PROXY_ADMIN) in the terminal: totals, per hour or day,
    top users, models, errors and time to first token, from the usage ledger."""
    try:
        rng = parse_range(range_, since, until)
    except RangeError as exc:
        raise click.BadParameter(exc.message, param_hint=f"'--{exc.param}'") from None
    state = _state()
    summary = summarize_range(state.accounting.store, rng, budgets=state.settings.budgets, top=top)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
    elif fmt == "csv":
        click.echo(to_csv(summary), nl=False)
    else:
        click.echo(to_text(summary), nl=False)


@cli.command("check")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per provider.")
def check_command(timeout: float) -> None:
    """Validate the configuration and check each provider is reachable with its key."""
    state = _state()
    failed = False
    click.echo(f"configuration OK: {len(state.settings.providers)} provider(s) at {state.settings.url_prefix or '/'}")
    for name, p in state.settings.providers.items():
        if p.type == "mock":
            click.echo(f"  {name:<12} mock       ok (offline)")
            continue
        if p.type == "anthropic":
            url, headers = f"{p.base_url}/v1/models", {"x-api-key": p.api_key, "anthropic-version": p.anthropic_version}
        else:
            url, headers = f"{p.base_url}/models", {"authorization": f"Bearer {p.api_key}"}
        try:
            r = state.upstream.session().get(url, headers={**p.headers, **headers}, timeout=timeout)
        except requests.RequestException as exc:
            failed = True
            click.echo(f"  {name:<12} {p.type:<10} UNREACHABLE ({type(exc).__name__}) {p.base_url}")
            continue
        if r.status_code in (401, 403):
            failed = True
            click.echo(f"  {name:<12} {p.type:<10} KEY REJECTED (HTTP {r.status_code}) {p.base_url}")
        elif r.status_code < 400:
            click.echo(f"  {name:<12} {p.type:<10} ok {p.base_url}")
        else:
            click.echo(f"  {name:<12} {p.type:<10} reachable, key accepted? HTTP {r.status_code} on {url}")
    if failed:
        raise SystemExit(1)
