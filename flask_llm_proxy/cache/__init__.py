"""The response cache (``LLM_PROXY_CACHE_*``): answers to repeated requests from memory or Redis,
replayed through the endpoint's own encoder, and single flight for identical requests in flight.

For each cacheable request :meth:`ResponseCache.turn` decides, before any upstream call, one of:

- **hit**: a stored answer (:attr:`Turn.entry`), replayed as a stream in the endpoint's format;
- **shared**: an identical request is streaming live (in this process, or with Redis anywhere in
  the fleet): this one reads the same chunks from the start (:attr:`Turn.flight`), no upstream call;
- **miss**: this request calls the upstream and leads a flight others may join; its complete,
  successful answer is stored (:class:`.tee.Tee`);
- **bypass**: the client opted out (``Cache-Control: no-store``; ``no-cache`` still stores), the
  provider turned the cache off, or the cache's Redis is down (then logged once per outage and
  counted, and the request is served live: the cache never makes a request fail).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from .._compat import spawn
from ..config import ProviderConfig, Settings
from ..errors import ProxyError, UpstreamError
from ..fleet import node_for
from ..providers.base import Translator
from .entry import Meta, pack, storable, unpack
from .fleet_flight import GRACE, FleetFlights
from .flight import Flight, Flights, LeaderGone
from .keys import cache_key, directives
from .stores import open_store
from .tee import Tee

log = logging.getLogger("flask_llm_proxy")

#: seconds the cache is bypassed after its Redis failed, before it is tried again
OUTAGE_PAUSE = 5.0

__all__ = ["LeaderGone", "Meta", "ResponseCache", "Tee", "Turn"]


class Turn:
    """What the cache decided for one request, and (for a miss) the way back to it."""

    __slots__ = ("cache", "result", "key", "entry", "flight", "leads", "store")

    def __init__(
        self,
        cache: ResponseCache,
        result: str,
        key: str | None = None,
        *,
        entry: tuple[Meta, list[Any]] | None = None,
        flight: Flight | None = None,
        leads: bool = False,
        store: bool = False,
    ) -> None:
        self.cache = cache
        self.result = result  #: hit, shared, miss, bypass, unavailable (the metric's label)
        self.key = key
        self.entry = entry
        self.flight = flight
        self.leads = leads  #: this request calls the upstream and writes ``flight``
        self.store = store  #: its complete answer is stored

    @property
    def header(self) -> str:
        """``X-LLM-Proxy-Cache``: served without an upstream call of its own, or not."""
        return {"hit": "hit", "shared": "hit", "miss": "miss"}.get(self.result, "bypass")

    @property
    def served(self) -> bool:
        return self.entry is not None or (self.flight is not None and not self.leads)

    # --- a hit or a shared answer ----------------------------------------------------------------

    def chunks(self, translator: Translator, keepalive: float | None) -> Iterator[list[Any] | None]:
        """The answer's chunk batches (``None``: a keep-alive is due); ``translator`` gets its usage
        and finish reason before the end. Raises the shared answer's error, or :class:`LeaderGone`
        (nothing was shared: ask again)."""
        if self.entry is not None:
            meta, chunks = self.entry
            meta.fill(translator)
            if chunks:
                yield chunks
            return
        assert self.flight is not None
        yield from self.flight.read(keepalive)
        self.flight.meta.fill(translator)  # type: ignore[union-attr]

    # --- a miss: the leader's way back -----------------------------------------------------------

    def tee(self, ex: Any, inner: Any, translator: Translator, first: tuple[Any, ...] = (), **kw: Any) -> Any:
        """``inner`` copied into the flight as it is read (see :class:`.tee.Tee`); ``inner`` as is
        when nothing is to be shared or stored."""
        if self.flight is None:
            return inner
        return Tee(self, ex, inner, translator, first, **kw)

    def complete(self, translator: Translator, content_type: str | None = None) -> None:
        """The live answer ended with its final event: share its end, store it if it succeeded."""
        flight = self.flight
        if flight is None or flight.done:
            return
        meta = Meta.of(translator, content_type)
        blob = None
        if self.store and storable(meta):
            blob = pack(meta, [c for batch in flight.batches for c in batch])
            if len(blob) > self.cache.max_bytes:
                blob = None
        flight.finish(meta)
        self.cache.ended(flight, blob, self.key)

    def complete_whole(self, body: bytes, translator: Translator, content_type: str | None) -> None:
        """A native ``stream: false`` answer: one chunk, the upstream's JSON."""
        if self.flight is not None and not self.flight.done:
            self.flight.add([body])
            self.complete(translator, content_type)

    def failed(self, err: ProxyError | None) -> None:
        """The live call failed (``None``: its client left and nobody else reads). Followers get
        the same error when it came from the upstream; else they ask again themselves."""
        flight = self.flight
        if flight is None or flight.done:
            return
        flight.fail(err, rejoin=not isinstance(err, UpstreamError))
        self.cache.ended(flight, None, self.key)


class ResponseCache:
    def __init__(self, settings: Settings, metrics: Any = None) -> None:
        url = settings.cache_url
        assert url is not None
        self.store = open_store(url)
        self.ttl = settings.cache_ttl
        self.max_bytes = settings.cache_max_bytes
        self.identity_scope = settings.cache_scope == "identity"
        self.keepalive = settings.keepalive
        self.metrics = metrics
        self.flights = Flights()
        self.fleet: Any = None
        if self.store.shared:
            self.fleet = FleetFlights(self.store, node_for(url), self.flights)  # type: ignore[arg-type]
        self._down_until = 0.0
        self._down = False

    def turn(self, provider: ProviderConfig, kind: str, body: Any, identity: str, cache_control: str | None) -> Turn:
        """Decide for one request (see the module's docstring); one Redis round trip at most."""
        if not provider.cache:
            return self._count(Turn(self, "bypass"), provider)
        read, write = directives(cache_control)
        if not write:
            return self._count(Turn(self, "bypass"), provider)
        if self._down and time.monotonic() < self._down_until:
            return self._count(Turn(self, "unavailable"), provider)
        key = cache_key(kind, provider, body, identity if self.identity_scope else None)
        if not read:  # no-cache: a fresh answer, stored for the next requests
            return self._count(Turn(self, "bypass", key, flight=Flight(key), leads=True, store=True), provider)
        flight, leads = self.flights.lead_or_join(key)
        if not leads:
            return self._count(Turn(self, "shared", key, flight=flight), provider)
        try:
            if self.fleet is not None:
                found, value = self.fleet.lookup(key)
            else:
                value = self.store.get(key)
                found = 1 if value is not None else 2
            self._up()
        except Exception as exc:  # noqa: BLE001 - any Redis failure: serve live
            self._outage(exc)
            self.flights.retire(flight)
            flight.fail(None, rejoin=True)  # requests that joined meanwhile decide again (and bypass)
            return self._count(Turn(self, "unavailable"), provider)
        if found == 1:
            try:
                meta, chunks = unpack(value)
            except ValueError:
                log.warning("cache: an entry of another version was ignored")
            else:
                self.flights.retire(flight)
                flight.add(chunks)  # requests that joined during the lookup
                flight.finish(meta)
                return self._count(Turn(self, "hit", key, entry=(meta, chunks)), provider)
        elif found == 3 and value.decode() != self.fleet.node.id:
            self.fleet.follow(flight, value)
            return self._count(Turn(self, "shared", key, flight=flight), provider)
        elif found == 3:  # this process led it a moment ago: its flight may still have it whole
            recent = self.flights.recent.get(key)
            if recent is not None and recent.meta is not None:
                self.flights.retire(flight)
                flight.fail(None, rejoin=True)
                return self._count(Turn(self, "shared", key, flight=recent), provider)
        if self.fleet is not None:
            self.fleet.led(flight)
        return self._count(Turn(self, "miss", key, flight=flight, leads=True, store=True), provider)

    def ended(self, flight: Flight, blob: bytes | None, key: str | None) -> None:
        """A live answer ended: store it (``blob``: complete, successful, not too large), let the
        flight go (a fleet flight stays followable a few seconds)."""
        self.flights.retire(flight, keep=GRACE if flight.fleet else 0.0)
        if flight.fleet:
            self.fleet.ended(flight, blob, self.ttl)  # the store and the lock in one round trip
        elif blob is not None and key is not None:
            if self.store.shared:
                spawn(self._put, key, blob)  # after the stream: never delays a token or the end
            else:
                self.store.put(key, blob, self.ttl)

    def _put(self, key: str, blob: bytes) -> None:
        try:
            self.store.put(key, blob, self.ttl)
        except Exception as exc:  # noqa: BLE001
            self._outage(exc)

    # --- outages and counting --------------------------------------------------------------------

    def _outage(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + OUTAGE_PAUSE
        if not self._down:
            self._down = True
            log.error(
                "cache: Redis unavailable (%s: %s); serving without the cache, retrying in %.0f s", type(exc).__name__, exc, OUTAGE_PAUSE
            )

    def _up(self) -> None:
        if self._down:
            self._down = False
            log.warning("cache: Redis is back; the cache is in use again")

    def _count(self, turn: Turn, provider: ProviderConfig) -> Turn:
        if self.metrics is not None:
            self.metrics.cache.labels(provider.name, turn.result).inc()
        return turn
