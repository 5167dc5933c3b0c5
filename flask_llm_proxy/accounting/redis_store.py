"""The Redis usage store: for a fleet of hosts, counters for budgets and a trimmed stream of records."""
from __future__ import annotations

import math
from typing import Any, Iterator

from . import redis_rollup
from .cells import Cells
from .exchange import UsageRecord
from .store import Spend, Store, day_key, month_key


class RedisStore(Store):
    """For fleets: per-identity and per-model daily counters, monthly per-identity counters for
    budgets, and an append-only stream of every record (``XADD``), all in one round trip.

    The stream is trimmed as it is written (``XADD ... MAXLEN ~ stream_maxlen``: Redis drops whole
    stream nodes, so it keeps somewhat more than that); ``None`` never trims it. Budgets read the
    counters, never the stream, so trimming it changes only what the CLI can list."""

    PREFIX = "llm_proxy"

    def __init__(self, url: str, stream_maxlen: int | None = None) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.stream = f"{self.PREFIX}:usage"
        self.stream_maxlen = stream_maxlen

    def _day(self, ts: float, kind: str, name: str) -> str:
        return f"{self.PREFIX}:day:{day_key(ts)}:{kind}:{name}"

    def _month(self, ts: float, name: str) -> str:
        return f"{self.PREFIX}:month:{month_key(ts)}:identity:{name}"

    def write(self, record: UsageRecord) -> None:
        ts = record.timestamp
        tokens = record.input_tokens + record.output_tokens
        cost = record.cost_usd or 0.0
        d = record.to_dict()
        fields = {k: ("" if v is None else (int(v) if isinstance(v, bool) else v)) for k, v in d.items()}
        pipe = self._redis.pipeline(transaction=True)
        for key, ttl in (
            (self._day(ts, "identity", record.identity), 40 * 86400),
            (self._day(ts, "model", record.model), 40 * 86400),
            (self._month(ts, record.identity), 400 * 86400),
        ):
            pipe.hincrby(key, "requests", 1)
            pipe.hincrby(key, "input_tokens", record.input_tokens)
            pipe.hincrby(key, "output_tokens", record.output_tokens)
            pipe.hincrby(key, "tokens", tokens)
            if cost:
                pipe.hincrbyfloat(key, "cost_usd", cost)
            pipe.expire(key, ttl)
        if self.stream_maxlen:
            pipe.xadd(self.stream, fields, maxlen=self.stream_maxlen, approximate=True)
        else:
            pipe.xadd(self.stream, fields)
        keys, args = redis_rollup.script_call(self.PREFIX, d)  # the operator page's aggregates
        pipe.eval(redis_rollup.SCRIPT, len(keys), *keys, *args)
        pipe.execute()

    def spend(self, identity: str, now: float) -> Spend:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._day(now, "identity", identity), "cost_usd", "tokens")
        pipe.hmget(self._month(now, identity), "cost_usd", "tokens")
        (d_cost, d_tok), (m_cost, m_tok) = pipe.execute()
        return Spend(
            daily_usd=float(d_cost or 0), daily_tokens=int(d_tok or 0),
            monthly_usd=float(m_cost or 0), monthly_tokens=int(m_tok or 0),
        )

    def records(self, since: float) -> Iterator[dict[str, Any]]:
        start = _stream_start(since)
        while True:
            batch = self._redis.xrange(self.stream, min=start, max="+", count=1000)
            if not batch:
                return
            for entry_id, fields in batch:
                yield _decode_stream_fields(fields)
            last = batch[-1][0].decode()
            ms, seq = last.split("-")
            start = f"{ms}-{int(seq) + 1}"

    def aggregates(self, grain: str, first: int, last: int, top: int = 10) -> Cells:
        """The operator page's figures from the counters written with each record (:mod:`.redis_rollup`)."""
        return redis_rollup.read_cells(self._redis, self.PREFIX, grain, first, last)

    def close(self) -> None:
        self._redis.close()


_MAX_STREAM_MS = 2**64 - 1


def _stream_start(since: float) -> str:
    """The first stream id at or after ``since``: a start before 1970 is ``0-0`` (a negative id
    is a Redis error), one past the largest id is the largest id."""
    ms = since * 1000
    if not ms > 0:  # also nan
        return "0-0"
    return f"{min(int(ms), _MAX_STREAM_MS) if math.isfinite(ms) else _MAX_STREAM_MS}-0"


_INT_FIELDS = {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "status", "retries", "reasoning_tokens",
               "saved_input_tokens", "saved_output_tokens"}
_FLOAT_FIELDS = {"timestamp", "cost_usd", "ttfb_ms", "duration_ms", "saved_cost_usd", "queue_ms"}


def _decode_stream_fields(fields: dict[bytes, bytes]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in fields.items():
        key, val = k.decode(), v.decode()
        if val == "":
            rec[key] = None
        elif key in _INT_FIELDS:
            rec[key] = int(val)
        elif key in _FLOAT_FIELDS:
            rec[key] = float(val)
        elif key in ("estimated", "cached"):
            rec[key] = val in ("1", "True", "true")
        else:
            rec[key] = val
    return rec

