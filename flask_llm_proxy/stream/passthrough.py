"""The native endpoints' stream: the upstream's own events relayed as they came, each whole,
while the provider's translator reads them for usage and completeness (accounting)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from ..accounting.exchange import Exchange
from ..errors import ProxyError, UpstreamError, scrub_bytes
from ..providers.base import Translator
from ..upstream.body import UpstreamBody
from .contract import PING
from .relay import MALFORMED


def passthrough(ex: Exchange, upstream: UpstreamBody, api: str, translator: Translator) -> Iterator[bytes]:
    """Relay each event with its own lines; a keep-alive never lands inside an event, a stream that
    breaks leaves no half event before the error event, and the provider's secrets are redacted
    from every event relayed (an upstream's error event may quote the request). ``upstream``: the
    body, or the response cache's :class:`~flask_llm_proxy.cache.tee.Tee` standing in for it."""
    call = ex.call
    secrets = [s.encode() for s in call.secrets]
    feed = translator.feed
    eager = True
    try:
        for batch in upstream:
            if batch is None:
                yield PING
                continue
            out = []
            failed: BaseException | None = None
            try:
                for event, data, raw in batch:
                    out.append(raw)  # an error event is relayed as the upstream sent it, then raised
                    call.tokens_streamed += len(feed(event, data))
            except (ProxyError, *MALFORMED) as exc:
                failed = exc
            if eager and call.tokens_streamed:
                eager = False
                upstream.eager = False  # the first token is out: events that came together go together
            if out:
                data_out = b"".join(out)
                yield scrub_bytes(data_out, secrets) if secrets else data_out
            if failed is not None:
                raise failed
        if not translator.done:
            raise UpstreamError("the upstream stream ended before its final event", type="network_error")
        call.complete = True
    except MALFORMED as exc:
        err = call.fail(UpstreamError(f"the upstream sent a malformed event ({type(exc).__name__})"))
        yield err.to_native_event(api)
    except ProxyError as err:
        err = call.fail(err)
        if not getattr(err, "from_stream", False):  # the upstream's own error event was relayed already
            yield err.to_native_event(api)
    except GeneratorExit:
        call.client_aborted = True
        raise
    finally:
        upstream.close()
        call.resp = None
        ex.settle()  # before the response ends, as relay() does; StreamBody.close finalizes


def replay(ex: Exchange, batches: Iterable[Any], api: str, first: tuple[Any, ...] = ()) -> Iterator[bytes]:
    """A native answer from the response cache or an identical request in flight: the upstream's
    own event bytes as they were relayed (batches of ``bytes``), ending as :func:`passthrough` ends."""
    call = ex.call
    try:
        for batch in chain(first, batches):
            if batch is None:
                yield PING
                continue
            yield batch[0] if len(batch) == 1 else b"".join(batch)
        call.complete = True
    except ProxyError as err:
        call.fail(err)
        if not getattr(err, "from_stream", False):  # the upstream's own error event was in the bytes
            yield err.to_native_event(api)
    except GeneratorExit:
        call.client_aborted = True
        raise
    finally:
        ex.settle()
