"""Single flight across processes and hosts, on the cache's Redis.

One round trip per cache miss (:data:`LOOKUP`) reads the stored answer or, failing that, takes the
key's lock (``SET NX PX``): the process that gets it calls the upstream; any other process follows
it. A follower's process asks the leader's process (through its :mod:`~flask_llm_proxy.fleet`
inbox) to publish the answer to a Redis stream of its own, ``llm_proxy:flight:<key>:<leader>``,
and reads it there from the first entry with ``XREAD BLOCK`` (one reader per key per process,
whatever the number of identical requests in it). A leader nobody follows from elsewhere writes
nothing to Redis per token.

The lock is a lease the leader renews each tick, kept a few seconds after a successful end (a
late follower still gets the whole answer from the stream), deleted after a failure (the next
request calls the upstream again). A leader that died stops renewing it: its followers see the
lock gone without an end and fail (or, having received nothing, ask again themselves).
"""

from __future__ import annotations

import logging
from typing import Any

from .. import _json
from .._compat import spawn, spawn_reader
from ..errors import NetworkError, ProxyError, UpstreamError
from ..fleet import INBOX_TTL_MS, PREFIX, Node
from .entry import Meta, decode_chunks, encode_chunks
from .flight import Flight, Flights
from .stores import RedisStore

log = logging.getLogger("flask_llm_proxy")

LEASE_MS = 10_000  #: a flight's lock lives this long without renewal
GRACE = 5.0  #: seconds a finished flight stays followable

# KEYS: the stored answer, the lock. ARGV: this node, lease ms, inbox prefix, the key, inbox ttl.
# -> {1, blob} stored | {2} lead | {3, owner} follow (owner may be this node)
LOOKUP = """
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
local owner = redis.call('GET', KEYS[2])
if not owner then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
if owner ~= ARGV[1] then
  local inbox = ARGV[3] .. owner
  redis.call('RPUSH', inbox, 'w|' .. ARGV[4])
  redis.call('PEXPIRE', inbox, ARGV[5])
end
return {3, owner}
"""
# KEYS: the stored answer, the lock; ARGV: this node, the answer ('' for none), its ttl ms, grace ms
# (0: the flight failed). The answer stored and the lock kept for late followers, or freed: one trip.
FINISH = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) else redis.call('DEL', KEYS[2]) end
end
return 0
"""
# KEYS: locks; ARGV: this node, ms. Renew the locks this node holds.
OWNED = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', key, ARGV[2]) else redis.call('DEL', key) end
  end
end
return 0
"""


def lock_key(key: str) -> str:
    return f"{PREFIX}:flight:{key}"


def stream_key(key: str, owner: str) -> str:
    return f"{PREFIX}:flight:{key}:{owner}"


def encode_error(err: ProxyError | None, rejoin: bool) -> bytes:
    if err is None:
        return _json.dumps({"rj": True})
    return _json.dumps(
        {
            "s": err.status,
            "t": err.type,
            "m": err.message,
            "u": isinstance(err, UpstreamError),
            "fs": bool(getattr(err, "from_stream", False)),
            "rj": rejoin,
        }
    )


def decode_error(data: bytes) -> tuple[ProxyError | None, bool]:
    d = _json.loads(data)
    if "m" not in d:
        return None, True
    err = (UpstreamError if d.get("u") else ProxyError)(d["m"], status=d["s"], type=d["t"])
    if d.get("fs"):
        err.from_stream = True  # type: ignore[attr-defined]
    return err, bool(d.get("rj"))


class FleetFlights:
    def __init__(self, store: RedisStore, node: Node, flights: Flights) -> None:
        self.store = store
        self.node = node
        self.flights = flights
        self._lookup: Any = None
        self._owned: Any = None
        self._finish: Any = None
        node.on("w", self._on_watch)
        node.every_tick(self._tick)

    def _scripts(self) -> None:
        if self._lookup is None:
            r = self.store.redis
            self._lookup = r.register_script(LOOKUP)
            self._owned = r.register_script(OWNED)
            self._finish = r.register_script(FINISH)

    # --- the request's side --------------------------------------------------------------------

    def lookup(self, key: str) -> tuple[int, Any]:
        """``(1, blob)`` stored, ``(2, None)`` this process leads, ``(3, owner)`` another leads."""
        self._scripts()
        res = self._lookup(keys=[RedisStore.key(key), lock_key(key)], args=[self.node.id, LEASE_MS, Node.inbox(""), key, INBOX_TTL_MS])
        return int(res[0]), (res[1] if len(res) > 1 else None)

    def led(self, flight: Flight) -> None:
        """``flight`` holds the fleet's lock: renew it while it runs, answer watch requests."""
        flight.fleet = True
        self.node.wake()

    def follow(self, flight: Flight, owner: bytes) -> None:
        """Feed ``flight`` (read by this process's identical requests) from the leader's stream."""
        self.node.wake()
        spawn_reader(lambda: self._relay(flight, owner.decode()))

    def ended(self, flight: Flight, blob: bytes | None, ttl: float) -> None:
        """The leader's flight ended: store its answer (``blob``) and keep the lock a few seconds
        for late followers after a success, or free it after a failure (the next request asks the
        upstream again). One script call, after the stream: never delays a token."""
        ok = flight.error is None and flight.meta is not None
        spawn(self._end, flight.key, blob or b"", int(ttl * 1000), int(GRACE * 1000) if ok else 0)

    def _end(self, key: str, blob: bytes, ttl_ms: int, grace_ms: int) -> None:
        try:
            self._scripts()
            self._finish(keys=[RedisStore.key(key), lock_key(key)], args=[self.node.id, blob, ttl_ms, grace_ms])
        except Exception as exc:  # noqa: BLE001 - the lock's lease ends it anyway; the answer is not stored
            log.warning("cache: could not store an answer or release its single-flight lock (%s)", type(exc).__name__)

    # --- this process's node -------------------------------------------------------------------

    def _tick(self) -> bool:
        mine = [f for f in self.flights.live.values() if f.fleet and not f.done]
        if mine:
            self._scripts()
            self._owned(keys=[lock_key(f.key) for f in mine], args=[self.node.id, LEASE_MS])
        self.flights.prune(GRACE)
        return bool(mine) or bool(self.flights.recent)

    def _on_watch(self, key: str) -> None:
        flight = self.flights.find(key)
        if flight is None or not flight.fleet or flight.publishing:
            return
        flight.publishing = flight.remote = True
        spawn_reader(lambda: self._publish(flight))

    def _publish(self, flight: Flight) -> None:
        """Copy ``flight`` to this node's stream for it, from the first batch: one ``XADD`` per
        wake-up with every batch that arrived since (a reader of the flight like any other)."""
        stream = stream_key(flight.key, self.node.id)
        r = self.store.redis
        ttl = LEASE_MS + int(GRACE * 1000)
        flight.readers += 1
        try:
            seen = 0
            while True:
                n = len(flight.batches)
                if n > seen:
                    data = encode_chunks([c for batch in flight.batches[seen:n] for c in batch])
                    seen = n
                    pipe = r.pipeline(transaction=False)
                    pipe.xadd(stream, {"c": data})
                    pipe.pexpire(stream, ttl)
                    pipe.execute()
                    continue
                if flight.done:
                    ok = flight.error is None and flight.meta is not None
                    fields = {"end": flight.meta.to_json()} if ok else {"err": encode_error(flight.error, flight.rejoin)}  # type: ignore[union-attr]
                    pipe = r.pipeline(transaction=False)
                    pipe.xadd(stream, fields)
                    pipe.pexpire(stream, ttl)
                    pipe.execute()
                    return
                flight.wait(seen, self.node.tick)
        except Exception as exc:  # noqa: BLE001 - the followers notice the missing end
            log.warning("cache: publishing a shared answer to Redis failed (%s)", type(exc).__name__)
        finally:
            flight.readers -= 1

    def _relay(self, flight: Flight, owner: str) -> None:
        """A follower process's one reader of the leader's stream."""
        stream, lock = stream_key(flight.key, owner), lock_key(flight.key)
        r = self.node.redis
        block = max(100, int(self.node.tick * 1000))
        last = "0-0"
        try:
            while True:
                res = r.xread({stream: last}, count=1000, block=block)
                if not res:
                    if not flight.readers:  # every identical request here went away
                        flight.fail(None)
                        return
                    if (r.get(lock) or b"").decode() != owner:  # nothing more will come (asked again if nothing came)
                        flight.fail(NetworkError("the request whose answer this one shared was lost (its worker stopped)"), rejoin=True)
                        return
                    continue
                for entry_id, fields in res[0][1]:
                    last = entry_id
                    if b"c" in fields:
                        flight.add(decode_chunks(fields[b"c"]))
                    elif b"end" in fields:
                        flight.finish(Meta.from_json(fields[b"end"]))
                        return
                    elif b"err" in fields:
                        err, rejoin = decode_error(fields[b"err"])
                        flight.fail(err, rejoin=rejoin)
                        return
        except Exception as exc:  # noqa: BLE001 - Redis went away: the followers fail (or ask again)
            log.warning("cache: reading a shared answer from Redis failed (%s)", type(exc).__name__)
            flight.fail(NetworkError("lost the answer this request shared with an identical one"), rejoin=True)
        finally:
            self.flights.retire(flight)
