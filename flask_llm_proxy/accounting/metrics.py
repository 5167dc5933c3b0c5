"""Prometheus metrics (``LLM_PROXY_METRICS``), counted in every gunicorn worker.

With ``PROMETHEUS_MULTIPROC_DIR`` set (example_app/gunicorn.conf.py sets it) prometheus_client
writes each worker's values to files there and ``/metrics`` merges them, so a scrape that lands
on any worker sees the whole server. Labels are bounded: provider, an allow-listed model name
(or the pattern it matched), status and error type; never an identity.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("flask_llm_proxy")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_metrics: Metrics | None = None


class Metrics:
    """The metric objects, created once per process (prometheus_client registers them globally)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("llm_proxy_requests", "Proxied requests that passed validation", ["provider", "model", "status"])
        self.errors = Counter("llm_proxy_errors", "Failed proxied requests by error type", ["provider", "type"])
        self.retries = Counter("llm_proxy_upstream_retries", "Upstream attempts that were retried", ["provider"])
        self.timeouts = Counter("llm_proxy_timeouts", "Requests that ended in an upstream timeout", ["provider"])
        self.aborts = Counter("llm_proxy_client_aborts", "Streams the client left before the end", ["provider"])
        self.ttfb = Histogram("llm_proxy_ttfb_seconds", "Time from request to first token", ["provider"], buckets=_BUCKETS)
        self.duration = Histogram("llm_proxy_request_duration_seconds", "Time from request to last byte", ["provider"], buckets=_BUCKETS)
        self.tokens = Counter("llm_proxy_tokens", "Tokens billed by the upstream", ["provider", "model", "direction"])
        self.cost = Counter("llm_proxy_cost_usd", "Cost in USD of the proxied requests (priced models)", ["provider", "model"])
        self.inflight = Gauge("llm_proxy_inflight_streams", "Streams open right now", ["provider"], multiprocess_mode="livesum")
        self.ledger_errors = Counter("llm_proxy_ledger_errors", "Usage records a sink failed to store", [])
        self.refused = Counter(
            "llm_proxy_refused",
            "Requests answered with an error before any upstream call (invalid, unauthenticated, over a limit, quota or budget)",
            ["provider", "type"],
        )
        self.cache = Counter(
            "llm_proxy_cache",
            "Response cache decisions: hit (stored answer), shared (an identical "
            "request's live answer), miss, bypass (opted out or off for the provider), unavailable "
            "(the cache's Redis is down)",
            ["provider", "result"],
        )
        self.queue_seconds = Histogram(
            "llm_proxy_queue_seconds",
            "Time waiting for a concurrency slot",
            ["provider"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.queue_waiting = Gauge(
            "llm_proxy_queue_waiting", "Requests waiting for a concurrency slot right now", ["provider"], multiprocess_mode="livesum"
        )


def get_metrics() -> Metrics | None:
    global _metrics
    if _metrics is None:
        try:
            _metrics = Metrics()
        except ImportError:
            log.error("LLM_PROXY_METRICS is on but prometheus_client is not installed: pip install flask-llm-proxy[metrics]")
            return None
    return _metrics


def observe(m: Metrics, record: Any, model_label: str) -> None:
    p = record.provider
    m.requests.labels(p, model_label, str(record.status)).inc()
    if record.error_type:
        m.errors.labels(p, record.error_type).inc()
        if record.error_type == "timeout":
            m.timeouts.labels(p).inc()
        elif record.error_type == "client_closed":
            m.aborts.labels(p).inc()
    if record.retries:
        m.retries.labels(p).inc(record.retries)
    if record.ttfb_ms is not None:
        m.ttfb.labels(p).observe(record.ttfb_ms / 1000.0)
    m.duration.labels(p).observe(record.duration_ms / 1000.0)
    if record.input_tokens:
        m.tokens.labels(p, model_label, "input").inc(record.input_tokens)
    if record.output_tokens:
        m.tokens.labels(p, model_label, "output").inc(record.output_tokens)
    if record.cost_usd:
        m.cost.labels(p, model_label).inc(record.cost_usd)


def render() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def address_allowed(addr: str, allow: Iterable[str]) -> bool:
    """``LLM_PROXY_METRICS_ALLOW``: addresses or networks (CIDR); empty allows everyone."""
    allow = list(allow)
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
