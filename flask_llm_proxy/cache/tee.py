"""The live answer on its way to its own client, copied batch by batch into its flight (identical
requests read it as it grows) and, once complete, into the store.

:class:`Tee` stands where the endpoint's encoder reads the upstream (the contract's items, the
native passthrough's raw events) and is closed the same way. When its client leaves while others
read the same answer, the upstream is not dropped: the rest is read in the background for them,
and the leaving request's record waits for the end (:meth:`Exchange.hold`), so it holds every
token the upstream billed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

from .._compat import spawn_reader
from ..errors import NetworkError, ProxyError, UpstreamError

if TYPE_CHECKING:
    from ..accounting.exchange import Exchange
    from ..providers.base import Translator
    from .flight import Flight

log = logging.getLogger("flask_llm_proxy")


class Turn(Protocol):
    """What a tee needs of the cache's decision (:class:`flask_llm_proxy.cache.Turn`)."""

    flight: Flight | None

    def complete(self, translator: Translator, content_type: str | None = None) -> None: ...

    def failed(self, err: ProxyError | None) -> None: ...


def _items(batch: list[Any]) -> list[Any]:
    return batch


def _raw(batch: list[Any]) -> list[Any]:
    return [ev[2] for ev in batch]


class Tee:
    """Iterate it in place of ``inner``; close it as ``inner`` would be closed.

    ``raw``: ``inner`` yields the native passthrough's ``(type, data, bytes)`` events (their bytes
    are shared); else the contract's items (text deltas and tool calls). ``feed``: the translator's
    ``feed``, for raw events read after the client left (the passthrough no longer reads them).
    """

    __slots__ = ("turn", "ex", "inner", "first", "translator", "content_type", "feed", "_chunks", "_gen", "_ended", "_draining")

    def __init__(
        self,
        turn: Turn,
        ex: Exchange,
        inner: Iterable[Any],
        translator: Translator,
        first: tuple[Any, ...] = (),
        *,
        raw: bool = False,
        feed: Callable[[str, str], list[Any]] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.turn = turn
        self.ex = ex
        self.inner = inner
        self.first = first
        self.translator = translator
        self.content_type = content_type
        self.feed = feed
        self._chunks = _raw if raw else _items
        self._gen = self._run()
        self._ended = False
        self._draining = False
        turn.flight.open()  # type: ignore[union-attr]
        ex.on_finalize(self._finalized)

    def __iter__(self) -> Iterator[Any]:
        return self._gen

    @property
    def eager(self) -> bool:
        """The body's hand-over mode (:attr:`~flask_llm_proxy.upstream.body.UpstreamBody.eager`),
        for the native passthrough, which reads the body through this tee."""
        return bool(self.inner.eager)  # type: ignore[attr-defined]

    @eager.setter
    def eager(self, value: bool) -> None:
        self.inner.eager = value  # type: ignore[attr-defined]

    def _run(self) -> Iterator[Any]:
        add = self.turn.flight.add  # type: ignore[union-attr]
        chunks = self._chunks
        try:
            for batch in chain(self.first, self.inner) if self.first else self.inner:
                if batch:
                    add(chunks(batch))
                    if self._draining and self.feed is not None:
                        for ev in batch:
                            self.feed(ev[0], ev[1])
                yield batch
        except ProxyError as err:
            self._ended = True
            self.turn.failed(err)
            raise
        except GeneratorExit:
            raise
        except Exception as exc:  # a malformed event (the encoder reports it its own way)
            self._ended = True
            self.turn.failed(UpstreamError(f"the upstream sent a malformed event ({type(exc).__name__})"))
            raise
        self._ended = True
        if self.translator.done:
            self.turn.complete(self.translator, self.content_type)
        else:
            self.turn.failed(NetworkError("the upstream stream ended before its final event"))

    def close(self) -> None:
        if self._ended or self._draining:
            self._close_inner()
            return
        err = self.ex.call.error
        if err is not None:  # the encoder failed the stream (an upstream error event it read)
            self._ended = True
            self.turn.failed(err)
        elif self.turn.flight is not None and self.turn.flight.watched:
            self._draining = True  # the client left, identical requests still read: finish it for them
            self.ex.hold()
            spawn_reader(self._drain)
            return
        else:
            self._ended = True
            self.turn.failed(None)  # nobody else reads: stop the upstream now
        self._close_inner()

    def _finalized(self, record: Any) -> None:
        """The request was accounted for without this being read to its end or closed (a
        response the server never started): its flight must end too."""
        if not self._ended and not self._draining:
            self._ended = True
            self.turn.failed(self.ex.call.error)
            self._close_inner()

    def _drain(self) -> None:
        try:
            for _ in self._gen:
                pass
        except Exception:  # noqa: BLE001 - already handed to the turn (its followers get it)
            log.debug("a shared answer failed after its first client left", exc_info=True)
        finally:
            self._close_inner()
            self.ex.resume()

    def _close_inner(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
