"""Slots counted for the whole fleet on Redis: leases, a first-come-first-served wait, hand-off.

Per semaphore (``p:<provider>``, ``u:<identity>``) under ``llm_proxy:q:<name>``: ``:h`` the holders
(a sorted set, score = lease end), ``:w`` the waiters in arrival order, ``:wd`` each waiter's
process and deadline. Every change is one Lua script, with Redis's own clock (hosts' clocks may
differ). A request that finds a free slot and nobody waiting takes it in one round trip. Otherwise
it queues and waits, without polling: whoever frees a slot hands
it to the first live waiter and pushes ``g|<ticket>`` to that waiter's process inbox
(:mod:`~flask_llm_proxy.fleet`), whose one ``BLPOP`` wakes it. Leases are renewed each tick by
the holder's process; a process that dies stops renewing, and its slots return when their leases
end (at most ``LLM_PROXY_QUEUE_LEASE``), swept by any process that has waiters. While nobody
waits, a process keeps a finished request's slots for its next request with the same needs (no
round trip at all) until its next tick, and gives back the ones it kept with its next acquire or
at that tick; see :class:`RedisSlots`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .._compat import make_event
from ..fleet import INBOX_TTL_MS, PREFIX, Node, node_for, redis_client

Q = f"{PREFIX}:q:"
INBOX = Node.inbox("")  #: the prefix of every process's inbox

_PRELUDE = """
local KEY_TTL = 600000
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function nudge(h, inbox, inbox_ttl)
  -- someone waits: the processes holding slots return the ones they keep for later at once
  local seen = {}
  for _, holder in ipairs(redis.call('ZRANGE', h, 0, -1)) do
    local node = string.match(holder, '^([^:]+):')
    if node and not seen[node] then
      seen[node] = true
      redis.call('RPUSH', inbox .. node, 'f|')
      redis.call('PEXPIRE', inbox .. node, inbox_ttl)
    end
  end
end
local function grant(prefix, name, cap, now, lease, inbox, inbox_ttl, sweep)
  local h, w, wd = prefix .. name .. ':h', prefix .. name .. ':w', prefix .. name .. ':wd'
  redis.call('ZREMRANGEBYSCORE', h, '-inf', now)
  while redis.call('ZCARD', h) < cap do
    local head = redis.call('ZRANGE', w, 0, 0)[1]
    if not head then break end
    redis.call('ZREM', w, head)
    local info = redis.call('HGET', wd, head)
    redis.call('HDEL', wd, head)
    if info then
      local sep = string.find(info, '|', 1, true)
      if tonumber(string.sub(info, sep + 1)) > now then
        redis.call('ZADD', h, now + lease, head)
        redis.call('PEXPIRE', h, KEY_TTL)
        local box = inbox .. string.sub(info, 1, sep - 1)
        redis.call('RPUSH', box, 'g|' .. head)
        redis.call('PEXPIRE', box, inbox_ttl)
      end
    end
  end
  if sweep and redis.call('ZCARD', w) > 0 then nudge(h, inbox, inbox_ttl) end
end
local function give_back(first, last, prefix, now, lease, inbox, inbox_ttl, sweep)
  -- ARGV[first..last]: (ticket, name, cap) triples ('' ticket: only hand free slots on)
  for i = first, last, 3 do
    if ARGV[i] ~= '' then
      redis.call('ZREM', prefix .. ARGV[i + 1] .. ':h', ARGV[i])
      redis.call('ZREM', prefix .. ARGV[i + 1] .. ':w', ARGV[i])
      redis.call('HDEL', prefix .. ARGV[i + 1] .. ':wd', ARGV[i])
    end
  end
  for i = first, last, 3 do
    grant(prefix, ARGV[i + 1], tonumber(ARGV[i + 2]), now, lease, inbox, inbox_ttl, sweep)
  end
end
"""

# ARGV: lease ms, wait ms, ticket, node, prefix, inbox prefix, inbox ttl, n, then n values: the
# (ticket, name, cap) triples of slots this process gives back first, then the (name, cap) pairs
# wanted. -> 0: holds a slot of each; k: waits (queued) at the k-th.
ACQUIRE = (
    _PRELUDE
    + """
local lease, ticket, prefix, inbox, ttl = tonumber(ARGV[1]), ARGV[3], ARGV[5], ARGV[6], ARGV[7]
local now = clock()
local n = tonumber(ARGV[8])
if n > 0 then give_back(9, 8 + n, prefix, now, lease, inbox, ttl, false) end
for i = 9 + n, #ARGV, 2 do
  local name, cap = ARGV[i], tonumber(ARGV[i + 1])
  local h, w, wd = prefix .. name .. ':h', prefix .. name .. ':w', prefix .. name .. ':wd'
  grant(prefix, name, cap, now, lease, inbox, ttl, false)
  if redis.call('ZSCORE', h, ticket) then
    redis.call('ZADD', h, now + lease, ticket)
  else
    local rank = redis.call('ZRANK', w, ticket)
    local ahead = rank or redis.call('ZCARD', w)
    if redis.call('ZCARD', h) + ahead < cap then
      if rank then
        redis.call('ZREM', w, ticket)
        redis.call('HDEL', wd, ticket)
      end
      redis.call('ZADD', h, now + lease, ticket)
      redis.call('PEXPIRE', h, KEY_TTL)
    else
      if not rank then
        local seq = prefix .. name .. ':n'
        redis.call('ZADD', w, redis.call('INCR', seq), ticket)
        redis.call('HSET', wd, ticket, ARGV[4] .. '|' .. (now + tonumber(ARGV[2])))
        redis.call('PEXPIRE', w, KEY_TTL)
        redis.call('PEXPIRE', wd, KEY_TTL)
        redis.call('PEXPIRE', seq, KEY_TTL)
        nudge(h, inbox, ttl)
      end
      return (i - 7 - n) / 2
    end
  end
end
return 0
"""
)

# ARGV: lease ms, prefix, inbox prefix, inbox ttl, sweep (1: nudge holders where some wait), then
# (ticket, name, cap) triples.
RELEASE = (
    _PRELUDE
    + """
give_back(6, #ARGV, ARGV[2], clock(), tonumber(ARGV[1]), ARGV[3], ARGV[4], ARGV[5] == '1')
return 0
"""
)

# ARGV: lease ms, prefix, then (name, ticket) pairs: push the leases of slots still held.
RENEW = (
    _PRELUDE
    + """
local now = clock()
for i = 3, #ARGV, 2 do
  local h = ARGV[2] .. ARGV[i] .. ':h'
  redis.call('ZADD', h, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', h, KEY_TTL)
end
return 0
"""
)

#: seconds releases stay immediate after this process saw someone wait
URGENT = 10.0


class RedisSlots:
    """While nobody waits, a finished request's slots stay with this process: its next request
    with the same needs takes them over without a Redis call (their lease is renewed as theirs
    was), and those not taken over go back in the same script call as its next acquire, or at the
    next tick, whichever comes first. So a request nobody competes with costs no round trip, or
    one. The moment anyone waits (here, or anywhere: a queued request nudges the holders'
    processes), kept slots are given back at once, and finished ones go back at once for
    :data:`URGENT` seconds: the cap stays exact and the wait first come, first served."""

    shared = True

    def __init__(self, url: str, lease: float) -> None:
        self.url = url
        self.lease_ms = int(lease * 1000)
        self.node: Node = node_for(url)
        self.node.on("g", self._on_grant)
        self.node.on("f", self._on_nudge)
        self.node.every_tick(self._tick, tick=min(1.0, lease / 3))
        self._redis: Any = None
        self._scripts: tuple[Any, Any, Any] | None = None
        self._waiting: dict[str, Sequence[tuple[str, int]]] = {}  #: ticket -> needs, of requests queued here
        self._grants: dict[str, Any] = {}  #: ticket -> the event its grant sets (listed before it asks)
        self._held: dict[str, Sequence[tuple[str, int]]] = {}
        self._kept: dict[tuple[tuple[str, int], ...], list[str]] = {}  #: needs -> tickets of finished requests, slots still held
        self._urgent_until = 0.0

    def _run(self) -> tuple[Any, Any, Any]:
        if self._scripts is None:
            self._redis = redis_client(self.url, timeout=2.0)
            r = self._redis
            self._scripts = (r.register_script(ACQUIRE), r.register_script(RELEASE), r.register_script(RENEW))
        return self._scripts

    def ticket(self) -> str:
        """``<process>:<n>``: a queued request nudges the holders' processes by it."""
        return self.node.ticket()

    @staticmethod
    def _flat(wanted: Sequence[tuple[str, int]]) -> list[Any]:
        return [x for pair in wanted for x in pair]

    def acquire(
        self, ticket: str, wanted: Sequence[tuple[str, int]], deadline: float, gone: Any, on_wait: Callable[[], None]
    ) -> Callable[[], None]:
        """As :meth:`LocalSlots.acquire`; Redis errors propagate (the gate fails closed or open)."""
        acquire, release, _ = self._run()
        node = self.node
        needs = tuple(wanted)
        kept = self._kept.get(needs)
        if kept and not self._waiting and time.monotonic() >= self._urgent_until:
            ticket = kept.pop()  # a finished request's slots, still held: taken over, no round trip
            if not kept:
                del self._kept[needs]
            return self._hold(ticket, wanted, release)
        pairs = self._flat(wanted)
        node_id = node.id

        def attempt() -> int:
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
            later = self._take_kept()
            try:
                return int(acquire(args=(self.lease_ms, wait_ms, ticket, node_id, Q, INBOX, INBOX_TTL_MS, len(later), *later, *pairs)))
            except BaseException:
                self._keep_again(later)  # not given back: next time (or their leases end)
                raise

        # Listed for a grant before the first attempt: with threads (no gevent) the node's loop can
        # deliver the grant before attempt() has even returned, and a grant nobody is listed for is lost.
        event = make_event()
        self._grants[ticket] = event
        try:
            queued = attempt()
        except BaseException:
            del self._grants[ticket]
            raise
        if not queued:
            del self._grants[ticket]
        else:
            self._urgent_until = time.monotonic() + URGENT
            self._waiting[ticket] = wanted
            node.wake()  # grants arrive in this process's inbox
            on_wait()
            if gone is not None:
                gone.link(event)
            granted = False
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or (gone is not None and gone.is_set()):
                        break
                    if event.wait(left):
                        event.clear()
                        if gone is not None and gone.is_set():
                            break
                        if not attempt():  # confirms the handed-off slot (or queues at the next)
                            granted = True
                            break
            finally:
                self._waiting.pop(ticket, None)
                self._grants.pop(ticket, None)
                if gone is not None:
                    gone.unlink(event)
            if not granted:  # leaves the queue (and any slot handed to it meanwhile)
                release(args=(self.lease_ms, Q, INBOX, INBOX_TTL_MS, "0", *self._triples(ticket, wanted)))
                raise ConnectionAbortedError() if gone is not None and gone.is_set() else TimeoutError()
        return self._hold(ticket, wanted, release)

    def _hold(self, ticket: str, wanted: Sequence[tuple[str, int]], release: Any) -> Callable[[], None]:
        self._held[ticket] = wanted
        if not self.node.running:
            self.node.wake()  # renews the lease while the stream runs; gives back what is kept

        def give_back() -> None:
            del self._held[ticket]
            if self._waiting or time.monotonic() < self._urgent_until:
                release(args=(self.lease_ms, Q, INBOX, INBOX_TTL_MS, "0", *self._triples(ticket, wanted)))
            else:
                self._kept.setdefault(tuple(wanted), []).append(ticket)

        return give_back

    @staticmethod
    def _triples(ticket: str, wanted: Sequence[tuple[str, int]]) -> list[Any]:
        return [x for name, cap in wanted for x in (ticket, name, cap)]

    def _take_kept(self) -> list[Any]:
        """Every kept slot as (ticket, name, cap) triples, no longer kept."""
        kept, self._kept = self._kept, {}
        return [x for needs, tickets in kept.items() for t in tickets for name, cap in needs for x in (t, name, cap)]

    def _keep_again(self, triples: list[Any]) -> None:
        tickets: dict[str, list[tuple[str, int]]] = {}
        for i in range(0, len(triples), 3):
            tickets.setdefault(triples[i], []).append((triples[i + 1], triples[i + 2]))
        for ticket, needs in tickets.items():
            self._kept.setdefault(tuple(needs), []).append(ticket)

    def _give_back_later_ones(self) -> None:
        later = self._take_kept()
        if later:
            try:
                self._run()[1](args=(self.lease_ms, Q, INBOX, INBOX_TTL_MS, "0", *later))
            except BaseException:
                self._keep_again(later)
                raise

    def _on_grant(self, ticket: str) -> None:
        event = self._grants.get(ticket)
        if event is not None:
            event.set()

    def _on_nudge(self, _: str) -> None:
        self._urgent_until = time.monotonic() + URGENT
        self._give_back_later_ones()

    def _tick(self) -> bool:
        if not self._held and not self._waiting and not self._kept:
            return False
        _, release, renew = self._run()
        self._give_back_later_ones()
        if self._held:
            renew(args=[self.lease_ms, Q, *[x for t, wanted in list(self._held.items()) for name, _ in wanted for x in (name, t)]])
        if self._waiting:  # leases of dead processes end: hand their slots on (and nudge holders)
            sems = {name: cap for wanted in list(self._waiting.values()) for name, cap in wanted}
            release(args=[self.lease_ms, Q, INBOX, INBOX_TTL_MS, "1", *[x for name, cap in sems.items() for x in ("", name, cap)]])
        return True
