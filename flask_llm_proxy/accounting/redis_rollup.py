"""The Redis store's aggregates for the operator page, kept as each record is written.

The stream of records is trimmed, so a summary cannot be read from it; instead every record adds
to hashes per hour and per day (``<prefix>:agg:<grain>:<bucket>`` and
``<prefix>:aggusers:<grain>:<bucket>``), in the same transaction as the record, by one Lua script
call (a few dozen increments would otherwise be as many commands to encode on the worker; ``EVAL``
with the script's text, which Redis compiles once and caches, costs no extra round trip as
redis-py's ``SCRIPT EXISTS`` check before each pipeline would). The fields, one increment each:

* ``m|<metric>|<provider>|<model>``: the counters of :data:`.cells.MODEL_METRICS`;
* ``e|<error type>``: records with that error type;
* ``t|<provider>|<ms bin>``: the time to first token, binned by :func:`.cells.ms_bin`;
* ``q|<ms bin>``: the queue wait, for records that carry one;
* in ``aggusers``: ``<metric>|<identity>`` for :data:`.cells.USER_METRICS`.

Provider names cannot hold ``|`` (the configuration refuses it) and the model, error type and
identity come last in their field, so any text there is read back whole. Hourly hashes are kept
:data:`HOUR_TTL` (the 24-hour view needs 25 hours), daily ones :data:`DAY_TTL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .cells import USER_METRICS, Cells, bucket_of, ms_bin, record_counts

HOUR_TTL = 3 * 86400
DAY_TTL = 400 * 86400

# KEYS: agg hour, users hour, agg day, users day; ARGV: hour ttl, day ttl, number of agg pairs,
# then the agg (field, increment) pairs, then the users pairs
SCRIPT = """
local na = tonumber(ARGV[3])
for k = 0, 1 do
  local agg, users, ttl = KEYS[1 + 2 * k], KEYS[2 + 2 * k], ARGV[1 + k]
  for i = 4, 3 + 2 * na, 2 do redis.call('HINCRBY', agg, ARGV[i], ARGV[i + 1]) end
  for i = 4 + 2 * na, #ARGV, 2 do redis.call('HINCRBY', users, ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', agg, ttl)
  redis.call('EXPIRE', users, ttl)
end
return 1
"""


def keys(prefix: str, grain: str, bucket: int) -> tuple[str, str]:
    return f"{prefix}:agg:{grain}:{bucket}", f"{prefix}:aggusers:{grain}:{bucket}"


def script_call(prefix: str, rec: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """The script's keys and arguments for one record (its ``to_dict()``)."""
    ts = float(rec["timestamp"])
    provider, model, identity = rec["provider"], rec["model"], rec["identity"]
    counts = record_counts(rec)
    agg: list[Any] = []
    for metric, n in counts.items():
        if n:
            agg += (f"m|{metric}|{provider}|{model}", n)
    if rec.get("error_type"):
        agg += (f"e|{rec['error_type']}", 1)
    if rec.get("ttfb_ms") is not None:
        agg += (f"t|{provider}|{ms_bin(float(rec['ttfb_ms']))}", 1)
    if rec.get("queue_ms") is not None:
        agg += (f"q|{ms_bin(float(rec['queue_ms']))}", 1)
    users: list[Any] = [f"requests|{identity}", 1, f"tokens|{identity}", counts["input_tokens"] + counts["output_tokens"]]
    if counts["cost_micro"]:
        users += (f"cost_micro|{identity}", counts["cost_micro"])
    key_list = [*keys(prefix, "hour", bucket_of(ts, "hour")), *keys(prefix, "day", bucket_of(ts, "day"))]
    return key_list, [HOUR_TTL, DAY_TTL, len(agg) // 2, *agg, *users]


def read_cells(redis: Any, prefix: str, grain: str, first: int, last: int) -> Cells:
    """The cells of buckets ``first..last``: two ``HGETALL`` per bucket, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    buckets = range(first, last + 1)
    for b in buckets:
        for key in keys(prefix, grain, b):
            pipe.hgetall(key)
    replies = pipe.execute()
    cells = Cells(grain)
    users = cells.users
    for i, b in enumerate(buckets):
        for raw, n in replies[2 * i].items():
            _add_agg(cells, b, raw.decode(), int(n))
        # a day of a busy fleet is thousands of users: this loop is the summary's cost
        for raw, n in replies[2 * i + 1].items():
            metric, _, identity = raw.partition(b"|")
            user_key = (b, identity.decode())
            cell = users.get(user_key)
            if cell is None:
                cell = users[user_key] = dict.fromkeys(USER_METRICS, 0)
            cell[_METRIC_NAMES.get(metric) or metric.decode()] = int(n)
    return cells


_METRIC_NAMES = {m.encode(): m for m in USER_METRICS}


def _add_agg(cells: Cells, b: int, name: str, n: int) -> None:
    kind = name[:2]
    if kind == "m|":
        _, metric, provider, model = name.split("|", 3)
        cells.add_model((b, provider, model), {metric: n})
    elif kind == "e|":
        cells.add_error((b, name[2:]), n)
    elif kind == "t|":
        _, provider, ms = name.split("|", 2)
        cells.add_ttfb((b, provider), int(ms), n)
    elif kind == "q|":
        cells.add_queue(b, int(name[2:]), n)
