"""The in-flight record: what the usage store knows of a request while its upstream call runs.

Written before the upstream call (write-ahead), brought up to date at most once a second while the
answer streams, and replaced by the final record when the request ends. If the worker dies first,
whoever notices (gunicorn's master through :func:`flask_llm_proxy.gunicorn.child_exit`, a worker's
sweep, another host once the lease ran out) turns it into a ``worker_lost`` record with
:func:`lost_record`: nothing else is needed to close it, not even the app's configuration.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields
from typing import Any

from .exchange import UsageRecord

#: ``error_type`` of a request whose worker died before it ended
WORKER_LOST = "worker_lost"


@dataclass(slots=True)
class InflightEntry:
    wal_id: str  #: unique per exchange (a client's X-Request-ID may repeat)
    request_id: str
    identity: str
    provider: str
    model: str
    endpoint: str
    input_tokens: int  #: the upstream's count once it said it, else the estimate from the prompt size
    output_tokens: int  #: relayed so far, as of ``updated``
    price_in: float | None  #: USD per million tokens, so a record can be priced without the app's table
    price_out: float | None
    host: str
    pid: int
    started: float  #: wall clock, the record's timestamp
    updated: float  #: wall clock of the last update
    deployment: str | None = None
    fallback_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InflightEntry:
        values: dict[str, Any] = {k: d.get(k) for k in COLUMNS}
        return cls(**values)


COLUMNS = tuple(f.name for f in fields(InflightEntry))


def lost_record(e: InflightEntry) -> UsageRecord:
    """The record of a request whose worker died: its last known counts, flagged as an estimate and
    charged like any other (budgets read the store, quotas are charged when it is announced)."""
    cost = None
    if e.price_in is not None and e.price_out is not None:
        cost = round((e.input_tokens * e.price_in + e.output_tokens * e.price_out) / 1_000_000, 6)
    return UsageRecord(
        request_id=e.request_id,
        identity=e.identity,
        provider=e.provider,
        model=e.model,
        input_tokens=int(e.input_tokens),
        output_tokens=int(e.output_tokens),
        estimated=True,
        cost_usd=cost,
        status=200 if e.output_tokens else 502,  # 200: the stream had started when it was cut
        error_type=WORKER_LOST,
        ttfb_ms=None,
        duration_ms=round(max(0.0, e.updated - e.started) * 1000.0, 1),
        retries=0,
        finish_reason=None,
        cached=False,
        timestamp=e.started,
        endpoint=e.endpoint,
        deployment=e.deployment,
        fallback_from=e.fallback_from,
    )


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is still running (a zombie, dead but not yet reaped by
    gunicorn's master, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists


def default_host_name() -> str:
    return socket.gethostname() or "localhost"
