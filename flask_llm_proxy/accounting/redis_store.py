"""The Redis usage store: for a fleet of hosts, counters for budgets and a trimmed stream of records."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from .. import _json
from ..fleet import redis_client
from . import redis_rollup
from .cells import Cells
from .exchange import UsageRecord
from .inflight import InflightEntry, lost_record, pid_alive
from .redis_ahead import AheadChannel
from .store import Spend, Store, day_key, month_key

# One record: the budget counters, the stream entry, the operator page's aggregates (redis_rollup's
# own script, run as a function) and, for a worker_lost record, its place in the queue of records
# to announce, in one atomic step; with a write-ahead id, only if this call
# is the one that removes the in-flight entry (a request's final record and a sweep's worker_lost
# record can race only when a worker stalled past its lease: exactly one of them is written), or,
# ``force``, whether or not it was there (an in-flight write whose fate is unknown, redis_ahead).
_WRITE = (
    """
local function rollup(KEYS, ARGV)
"""
    + redis_rollup.SCRIPT
    + """
end
if ARGV[1] ~= '' and redis.call('HDEL', KEYS[1], ARGV[1]) == 0 and ARGV[7] ~= '1' then return 0 end
local tokens = tonumber(ARGV[2]) + tonumber(ARGV[3])
local ttl = {3456000, 3456000, 34560000}
for i = 2, 4 do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], 'input_tokens', ARGV[2])
  redis.call('HINCRBY', KEYS[i], 'output_tokens', ARGV[3])
  redis.call('HINCRBY', KEYS[i], 'tokens', tokens)
  if ARGV[4] ~= '' then redis.call('HINCRBYFLOAT', KEYS[i], 'cost_usd', ARGV[4]) end
  redis.call('EXPIRE', KEYS[i], ttl[i - 1])
end
local nf = tonumber(ARGV[8])
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 9, 8 + nf))
else
  redis.call('XADD', KEYS[5], '*', unpack(ARGV, 9, 8 + nf))
end
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[6], ARGV[6]) end
local rest = {}
for i = 9 + nf, #ARGV do rest[#rest + 1] = ARGV[i] end
rollup({KEYS[7], KEYS[8], KEYS[9], KEYS[10]}, rest)
return 1
"""
)
# An in-flight record, and its worker's place in the lease table, in one round trip.
_BEGIN = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])"
# Progress of in-flight records that still exist (one whose request just ended must not come back)
# and the worker's lease.
_PROGRESS = """
for i = 3, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
"""
# A worker whose in-flight records are all gone leaves the lease table (it joins again on its next
# request).
_FORGET = "if redis.call('HLEN', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end return 0"


class RedisStore(Store):
    """For fleets: per-identity and per-model daily counters, monthly per-identity counters for
    budgets, and an append-only stream of every record (``XADD``), all in one round trip.

    The stream is trimmed as it is written (``XADD ... MAXLEN ~ stream_maxlen``: Redis drops whole
    stream nodes, so it keeps somewhat more than that); ``None`` never trims it. Budgets read the
    counters, never the stream, so trimming it changes only what the CLI can list.

    Write-ahead: a hash of in-flight records per worker (``llm_proxy:inflight:<host>|<pid>``) and
    one sorted set of the workers by the time each last renewed its lease (``llm_proxy:workers``),
    so a sweep finds dead workers, of this host or any other, without reading every record.
    """

    PREFIX = "llm_proxy"
    write_ahead = True

    def __init__(self, url: str, stream_maxlen: int | None = None) -> None:
        self._redis = redis_client(url, timeout=5.0, connect_timeout=2.0)
        self.stream = f"{self.PREFIX}:usage"
        self.stream_maxlen = stream_maxlen
        self.workers = f"{self.PREFIX}:workers"
        self.lost = f"{self.PREFIX}:lost"
        self._write = self._redis.register_script(_WRITE)
        self._forget = self._redis.register_script(_FORGET)
        self._progress = self._redis.register_script(_PROGRESS)
        self._begin = self._redis.register_script(_BEGIN)
        self._ahead = AheadChannel(self._redis, {"begin": self._begin, "write": self._write})

    def _day(self, ts: float, kind: str, name: str) -> str:
        return f"{self.PREFIX}:day:{day_key(ts)}:{kind}:{name}"

    def _month(self, ts: float, name: str) -> str:
        return f"{self.PREFIX}:month:{month_key(ts)}:identity:{name}"

    def _inflight(self, worker: str) -> str:
        return f"{self.PREFIX}:inflight:{worker}"

    def write(self, record: UsageRecord) -> None:
        self._record(record, None)

    def _record(self, record: UsageRecord, wal_id: str | None, *, lost: bool = False) -> bool:
        keys, args = self._write_args(record, wal_id, lost=lost)
        return bool(self._write(keys=keys, args=args))

    def _write_args(
        self, record: UsageRecord, wal_id: str | None, *, lost: bool = False, force: bool = False
    ) -> tuple[list[str], list[Any]]:
        ts = record.timestamp
        d = record.to_dict()
        fields = {k: ("" if v is None else (int(v) if isinstance(v, bool) else v)) for k, v in d.items()}
        keys = [
            self._inflight(worker_of(wal_id)) if wal_id else self.stream,
            self._day(ts, "identity", record.identity),
            self._day(ts, "model", record.model),
            self._month(ts, record.identity),
            self.stream,
            self.lost,
        ]
        args: list[Any] = [
            wal_id or "",
            record.input_tokens,
            record.output_tokens,
            repr(record.cost_usd) if record.cost_usd else "",
            self.stream_maxlen or "",
            _json.dumps(d) if lost else "",
            "1" if force else "0",
            2 * len(fields),
        ]
        for k, v in fields.items():
            args += (k, v)
        rollup_keys, rollup_args = redis_rollup.script_call(self.PREFIX, d)  # the operator page's aggregates
        return keys + rollup_keys, args + rollup_args

    # --- write-ahead (see Store) ---------------------------------------------------------------

    def begin(self, entry: InflightEntry) -> None:
        worker = worker_of(entry.wal_id)
        self._ahead.send(
            "begin",
            [self._inflight(worker), self.workers],
            [entry.wal_id, _json.dumps(entry.to_dict()), entry.updated, worker],
            begin=entry.wal_id,
        )

    def progress(self, host: str, pid: int, entries: list[InflightEntry], now: float) -> None:
        worker = f"{host}|{pid}"
        args: list[Any] = [now, worker]
        for e in entries:
            args += (e.wal_id, _json.dumps(e.to_dict()))
        self._progress(keys=[self._inflight(worker), self.workers], args=args)

    def finish(self, record: UsageRecord, wal_id: str | None) -> bool:
        if wal_id is None:
            return bool(self._ahead.call("write", *self._write_args(record, None)))
        unsure = self._ahead.unsure
        done = self._ahead.call("write", *self._write_args(record, wal_id, force=wal_id in unsure))
        if not done and wal_id in unsure:  # its in-flight write failed after all: this record stands alone
            done = self._ahead.call("write", *self._write_args(record, wal_id, force=True))
        unsure.discard(wal_id)
        return bool(done)

    def close_dead(self, host: str, lease: float, now: float) -> int:
        me = f"{host}|{os.getpid()}"
        closed = 0
        workers: list[tuple[bytes, float]] = self._redis.zrange(self.workers, 0, -1, withscores=True)
        for raw, renewed in workers:
            worker = raw.decode()
            if worker == me:
                continue
            h, _, pid = worker.rpartition("|")
            if h == host and pid.isdigit() and not pid_alive(int(pid)):
                closed += self._close(worker)
            elif renewed < now - lease:
                closed += self._close(worker, stale_before=now - lease)
        return closed

    def close_worker(self, host: str, pid: int) -> int:
        return self._close(f"{host}|{pid}")

    def _close(self, worker: str, stale_before: float | None = None) -> int:
        key = self._inflight(worker)
        closed = 0
        entries: dict[bytes, bytes] = self._redis.hgetall(key)
        for wal_id, raw in entries.items():
            if stale_before is not None:
                renewed = self._redis.zscore(self.workers, worker)
                if renewed is not None and renewed >= stale_before:
                    break  # the worker renewed its lease after all
            entry = InflightEntry.from_dict(_json.loads(raw))
            closed += self._record(lost_record(entry), wal_id.decode(), lost=True)
        self._forget(keys=[key, self.workers], args=[worker])
        return closed

    def take_lost(self, limit: int = 100) -> list[UsageRecord]:
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(self.lost, 0, limit - 1)
        pipe.ltrim(self.lost, limit, -1)
        raw, _ = pipe.execute()
        return [UsageRecord(**_json.loads(r)) for r in raw]

    def spend(self, identity: str, now: float) -> Spend:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._day(now, "identity", identity), "cost_usd", "tokens")
        pipe.hmget(self._month(now, identity), "cost_usd", "tokens")
        (d_cost, d_tok), (m_cost, m_tok) = pipe.execute()
        return Spend(
            daily_usd=float(d_cost or 0),
            daily_tokens=int(d_tok or 0),
            monthly_usd=float(m_cost or 0),
            monthly_tokens=int(m_tok or 0),
        )

    def records(self, since: float) -> Iterator[dict[str, Any]]:
        start = _stream_start(since)
        while True:
            batch = self._redis.xrange(self.stream, min=start, max="+", count=1000)
            if not batch:
                return
            for _entry_id, fields in batch:
                yield _decode_stream_fields(fields or {})
            last = batch[-1][0]
            ms, seq = (last.decode() if isinstance(last, bytes) else str(last)).split("-")
            start = f"{ms}-{int(seq) + 1}"

    def aggregates(self, grain: str, first: int, last: int, top: int = 10) -> Cells:
        """The operator page's figures from the counters written with each record (:mod:`.redis_rollup`)."""
        return redis_rollup.read_cells(self._redis, self.PREFIX, grain, first, last)

    def close(self) -> None:
        self._redis.close()


def worker_of(wal_id: str) -> str:
    """``<host>|<pid>`` of a write-ahead id (``<host>|<pid>|<random>``, see WriteAhead)."""
    return wal_id.rsplit("|", 1)[0]


_MAX_STREAM_MS = 2**64 - 1


def _stream_start(since: float) -> str:
    """The first stream id at or after ``since``: a start before 1970 is ``0-0`` (a negative id
    is a Redis error), one past the largest id is the largest id."""
    ms = since * 1000
    if not ms > 0:  # also nan
        return "0-0"
    return f"{min(int(ms), _MAX_STREAM_MS) if math.isfinite(ms) else _MAX_STREAM_MS}-0"


_INT_FIELDS = {
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "status",
    "retries",
    "reasoning_tokens",
    "saved_input_tokens",
    "saved_output_tokens",
}
_FLOAT_FIELDS = {"timestamp", "cost_usd", "ttfb_ms", "duration_ms", "saved_cost_usd", "queue_ms"}


def _decode_stream_fields(fields: Mapping[Any, Any]) -> dict[str, Any]:
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
