"""Slots counted for the whole fleet on Redis: leases, a first-come-first-served wait, hand-off.

Per semaphore (``p:<provider>``, ``u:<identity>``) under ``llm_proxy:q:<name>``: ``:h`` the holders
(a sorted set, score = lease end), ``:w`` the waiters in arrival order, ``:wd`` each waiter's
process and deadline. Every change is one Lua script, with Redis's own clock (hosts' clocks may
differ). A request that finds a free slot and nobody waiting takes it in one round trip and gives
it back in another. Otherwise it queues and waits, without polling: whoever frees a slot hands
it to the first live waiter and pushes ``g|<ticket>`` to that waiter's process inbox
(:mod:`~flask_llm_proxy.fleet`), whose one ``BLPOP`` wakes it. Leases are renewed each tick by
the holder's process; a process that dies stops renewing, and its slots return when their leases
end (at most ``LLM_PROXY_QUEUE_LEASE``), swept by any process that has waiters.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from .._compat import make_event
from ..fleet import INBOX_TTL_MS, PREFIX, Node, node_for, redis_client

Q = f"{PREFIX}:q:"

_PRELUDE = """
local KEY_TTL = 600000
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function grant(prefix, name, cap, now, lease, inbox, inbox_ttl)
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
end
"""

# ARGV: lease ms, wait ms, ticket, node, prefix, inbox prefix, inbox ttl, then (name, cap) pairs.
# -> 0: holds a slot of each; n: waits (queued) at the n-th.
ACQUIRE = _PRELUDE + """
local lease, ticket, prefix = tonumber(ARGV[1]), ARGV[3], ARGV[5]
local now = clock()
for i = 8, #ARGV, 2 do
  local name, cap = ARGV[i], tonumber(ARGV[i + 1])
  local h, w, wd = prefix .. name .. ':h', prefix .. name .. ':w', prefix .. name .. ':wd'
  grant(prefix, name, cap, now, lease, ARGV[6], ARGV[7])
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
        local n = prefix .. name .. ':n'
        redis.call('ZADD', w, redis.call('INCR', n), ticket)
        redis.call('HSET', wd, ticket, ARGV[4] .. '|' .. (now + tonumber(ARGV[2])))
        redis.call('PEXPIRE', w, KEY_TTL)
        redis.call('PEXPIRE', wd, KEY_TTL)
        redis.call('PEXPIRE', n, KEY_TTL)
      end
      return (i - 6) / 2
    end
  end
end
return 0
"""

# ARGV: lease ms, ticket ('' to only sweep), prefix, inbox prefix, inbox ttl, then (name, cap) pairs.
RELEASE = _PRELUDE + """
local lease, ticket, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local now = clock()
for i = 6, #ARGV, 2 do
  local name = ARGV[i]
  if ticket ~= '' then
    redis.call('ZREM', prefix .. name .. ':h', ticket)
    redis.call('ZREM', prefix .. name .. ':w', ticket)
    redis.call('HDEL', prefix .. name .. ':wd', ticket)
  end
  grant(prefix, name, tonumber(ARGV[i + 1]), now, lease, ARGV[4], ARGV[5])
end
return 0
"""

# ARGV: lease ms, prefix, then (name, ticket) pairs: push the leases of slots still held.
RENEW = _PRELUDE + """
local now = clock()
for i = 3, #ARGV, 2 do
  local h = ARGV[2] .. ARGV[i] .. ':h'
  redis.call('ZADD', h, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', h, KEY_TTL)
end
return 0
"""


class RedisSlots:
    shared = True

    def __init__(self, url: str, lease: float) -> None:
        self.url = url
        self.lease_ms = int(lease * 1000)
        self.node: Node = node_for(url)
        self.node.on("g", self._on_grant)
        self.node.every_tick(self._tick, tick=min(1.0, lease / 3))
        self._redis: Any = None
        self._scripts: tuple[Any, Any, Any] | None = None
        self._waiting: dict[str, tuple[Any, Sequence[tuple[str, int]]]] = {}
        self._held: dict[str, Sequence[tuple[str, int]]] = {}

    def _run(self) -> tuple[Any, Any, Any]:
        if self._scripts is None:
            self._redis = redis_client(self.url, timeout=2.0)
            r = self._redis
            self._scripts = (r.register_script(ACQUIRE), r.register_script(RELEASE), r.register_script(RENEW))
        return self._scripts

    @staticmethod
    def _flat(wanted: Sequence[tuple[str, int]]) -> list[Any]:
        return [x for pair in wanted for x in pair]

    def acquire(self, ticket: str, wanted: Sequence[tuple[str, int]], deadline: float, gone: Any,
                on_wait: Callable[[], None]) -> Callable[[], None]:
        """As :meth:`LocalSlots.acquire`; Redis errors propagate (the gate fails closed or open)."""
        acquire, release, _ = self._run()
        node = self.node
        pairs = self._flat(wanted)

        def attempt() -> int:
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
            return int(acquire(args=[self.lease_ms, wait_ms, ticket, node.id, Q, Node.inbox(""), INBOX_TTL_MS, *pairs]))

        if attempt():
            event = make_event()
            self._waiting[ticket] = (event, wanted)
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
                if gone is not None:
                    gone.unlink(event)
            if not granted:
                release(args=[self.lease_ms, ticket, Q, Node.inbox(""), INBOX_TTL_MS, *pairs])  # leaves the queue (and any slot)
                raise ConnectionAbortedError() if gone is not None and gone.is_set() else TimeoutError()
        self._held[ticket] = wanted
        node.wake()  # renews the lease while the stream runs

        def give_back() -> None:
            self._held.pop(ticket, None)
            release(args=[self.lease_ms, ticket, Q, Node.inbox(""), INBOX_TTL_MS, *pairs])

        return give_back

    def _on_grant(self, ticket: str) -> None:
        found = self._waiting.get(ticket)
        if found is not None:
            found[0].set()

    def _tick(self) -> bool:
        if not self._held and not self._waiting:
            return False
        _, release, renew = self._run()
        if self._held:
            renew(args=[self.lease_ms, Q, *[x for t, wanted in list(self._held.items()) for name, _ in wanted for x in (name, t)]])
        if self._waiting:  # leases of dead processes end: hand their slots on
            sems = {name: cap for _, wanted in list(self._waiting.values()) for name, cap in wanted}
            release(args=[self.lease_ms, "", Q, Node.inbox(""), INBOX_TTL_MS, *self._flat(list(sems.items()))])
        return True
