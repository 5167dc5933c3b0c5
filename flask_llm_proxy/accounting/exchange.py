"""One proxied request from validation to its last byte, and the record it leaves behind.

An :class:`Exchange` is created once a request passed validation; whatever happens after (a
complete stream, an upstream error, a timeout, a browser that left) it is finalized exactly
once, which is what makes the usage ledger, quotas, budgets and metrics add up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ProxyError, UpstreamTimeout, scrub

if TYPE_CHECKING:
    from ..providers.base import Translator

log = logging.getLogger("flask_llm_proxy")

#: documented estimate for the part of a cut stream the upstream never counted
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class UsageRecord:
    """What the ledger stores and ``usage_recorded`` sends; attribute access to every field."""

    request_id: str
    identity: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    estimated: bool
    cost_usd: float | None
    status: int
    error_type: str | None
    ttfb_ms: float | None
    duration_ms: float
    retries: int
    finish_reason: str | None
    cached: bool  #: served by the proxy's response cache (or an identical request's upstream call): billed nothing
    timestamp: float = 0.0
    cache_read_tokens: int = 0  #: prompt tokens the upstream read from its own prompt cache
    cache_write_tokens: int = 0
    endpoint: str = "chat"
    #: of output_tokens, the reasoning (thinking) tokens, when the upstream reports them apart
    reasoning_tokens: int = 0
    saved_input_tokens: int = 0  #: a cached answer: the tokens and cost its upstream call took, saved this time
    saved_output_tokens: int = 0
    saved_cost_usd: float | None = None
    queue_ms: float | None = None  #: time waiting for a slot (``LLM_PROXY_MAX_CONCURRENT*``); None: no cap applied
    deployment: str | None = None  #: the label of the provider's deployment that served it
    fallback_from: str | None = None  #: ``provider:model`` first asked for, when a fallback served it

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RECORD_FIELDS}  # shallow: every field is a scalar (asdict copies deeply)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))


@dataclass(slots=True)
class RequestInfo:
    """Who asked for what: fixed by the web layer once the request passed every check."""

    request_id: str
    identity: str
    provider: str  #: the configured provider name
    model: str
    started: float  #: ``time.perf_counter()`` when the request arrived
    endpoint: str = "chat"  #: ``chat`` (the contract) or ``native:<api>``
    input_chars: int = 0  #: prompt size, the base of the estimate for a cut stream
    wall_started: float = field(default_factory=time.time)
    fallback_from: str | None = None  #: ``provider:model`` first asked for, once a fallback took over


class UpstreamCall:
    """The upstream call as it goes: written by the upstream and stream layers, read at the end."""

    __slots__ = (
        "translator",
        "resp",
        "secrets",
        "retries",
        "status",
        "error",
        "complete",
        "client_aborted",
        "tokens_streamed",
        "ttfb_ms",
        "text_parts",
        "cached",
        "queue_ms",
        "deployment",
        "release",
        "expired",
    )

    def __init__(self, *, keep_text: bool = False) -> None:
        self.translator: Translator | None = None  #: reads the answer's usage and finish reason
        self.resp: Closeable | None = None  #: the open upstream answer; closed at the end if still open
        self.secrets: tuple[str, ...] = ()  #: the provider's key and credential headers (config.provider_secrets)
        self.retries = 0
        self.status = 200  #: the HTTP status the client got
        self.error: ProxyError | None = None
        self.complete = False  #: the upstream's answer ended with its final event
        self.client_aborted = False
        self.tokens_streamed = 0
        self.ttfb_ms: float | None = None
        self.text_parts: list[str] | None = [] if keep_text else None  #: the answer's text (LLM_PROXY_LOG_CONTENT)
        self.cached = False  #: the answer came from the response cache, not from an upstream call of this request
        self.queue_ms: float | None = None  #: the wait for a concurrency slot
        self.deployment: str | None = None  #: the label of the deployment serving it (several configured)
        self.release: Callable[[], None] | None = None  #: gives the deployment's in-flight slot back
        self.expired: float | None = None  #: LLM_PROXY_MAX_STREAM_SECONDS, once the stream ran past it

    def fail(self, err: ProxyError, *, before_stream: bool = False) -> ProxyError:
        """Every failure the client is told of passes here: an upstream's message (an error event in
        its stream may quote the request) loses the provider's secrets. A stream cut at its time
        limit fails as that timeout, whatever the cut looked like from inside. Returns the error
        to tell the client."""
        if self.expired is not None:
            err = UpstreamTimeout(f"the stream ran longer than the proxy allows ({self.expired:g} s)")
        if self.secrets:
            err.message = scrub(err.message, self.secrets)
        self.error = err
        if before_stream:
            self.status = err.status
        return err


class Closeable(Protocol):
    def close(self) -> None: ...


class Exchange:
    """One proxied request from validation to its last byte, accounted for exactly once.

    ``request`` is what was asked (the web layer's), ``call`` how the upstream call went (the
    upstream and stream layers'); :meth:`finalize` turns both into the :class:`UsageRecord` the
    finalizers (quota, ledger, metrics, the log line) receive, whatever way the request ended.
    """

    __slots__ = ("request", "call", "cost_fn", "record", "_finalizers", "_after", "_settled", "_done", "_held", "_wanted")

    def __init__(self, request: RequestInfo, *, keep_text: bool = False) -> None:
        self.request = request
        self.call = UpstreamCall(keep_text=keep_text)
        self.cost_fn: Callable[..., float | None] | None = None
        self.record: UsageRecord | None = None
        self._finalizers: list[Callable[[UsageRecord], UsageRecord | None]] = []
        self._after: list[Callable[[UsageRecord], UsageRecord | None]] = []
        self._settled = False
        self._done = False
        self._held = False
        self._wanted = False

    def on_finalize(self, fn: Callable[[UsageRecord], UsageRecord | None], *, after_response: bool = False) -> None:
        """``fn(record)`` once the exchange ended: at :meth:`settle` (what the client's next request
        must see: the quota, the cache), or with ``after_response`` at :meth:`finalize`, after the
        response's last byte (the ledger, metrics, the signal, the log line)."""
        (self._after if after_response else self._finalizers).append(fn)

    def build_record(self) -> UsageRecord:
        req, call = self.request, self.call
        t = call.translator
        input_tokens = output_tokens = cache_read = cache_write = reasoning = hidden = 0
        reported = False
        finish = None
        if t is not None:
            u = t.usage
            input_tokens, output_tokens = u.input_tokens, u.output_tokens
            cache_read, cache_write = u.cache_read, u.cache_write
            reasoning, hidden = u.reasoning_tokens, u.hidden_deltas
            reported = u.reported
            finish = t.finish_reason
        saved_in = saved_out = 0
        saved_cost = None
        if call.cached:  # nothing was billed: the answer's own counts are what this request saved
            saved_in, saved_out = input_tokens, output_tokens
            if self.cost_fn is not None and t is not None:
                saved_cost = self.cost_fn(req.model, input_tokens, output_tokens, cache_read, cache_write)
            input_tokens = output_tokens = cache_read = cache_write = reasoning = 0
            t = None  # no cost, no estimate
        estimated = t is not None and not reported
        if estimated:
            # Cut before the upstream's final counts (documented): input from the prompt size when
            # the upstream never said it, output as the larger of what the upstream said and the
            # number of deltas received (relayed, and reasoning deltas the client did not ask for:
            # thinking is billed as output).
            if not input_tokens:
                input_tokens = max(1, req.input_chars // CHARS_PER_TOKEN)
            output_tokens = max(output_tokens, call.tokens_streamed + hidden)
        cost = self.cost_fn(req.model, input_tokens, output_tokens, cache_read, cache_write) if self.cost_fn and t is not None else None
        if call.cached:
            cost = 0.0
        error_type = call.error.type if call.error is not None else ("client_closed" if call.client_aborted else None)
        return UsageRecord(
            request_id=req.request_id,
            identity=req.identity,
            provider=req.provider,
            model=req.model,
            input_tokens=int(input_tokens),
            output_tokens=int(output_tokens),
            estimated=estimated,
            cost_usd=cost,
            status=call.status,
            error_type=error_type,
            ttfb_ms=call.ttfb_ms,
            duration_ms=round((time.perf_counter() - req.started) * 1000.0, 1),
            retries=call.retries,
            finish_reason=finish if call.complete else None,
            cached=call.cached,
            timestamp=req.wall_started,
            cache_read_tokens=int(cache_read),
            cache_write_tokens=int(cache_write),
            endpoint=req.endpoint,
            reasoning_tokens=int(reasoning),
            saved_input_tokens=int(saved_in),
            saved_output_tokens=int(saved_out),
            saved_cost_usd=saved_cost,
            queue_ms=call.queue_ms,
            deployment=call.deployment,
            fallback_from=req.fallback_from,
        )

    def hold(self) -> None:
        """Postpone :meth:`finalize` until :meth:`resume`: the upstream answer goes on after the
        client left (it feeds identical requests sharing it), and the record must hold all of it."""
        self._held = True

    def resume(self) -> None:
        self._held = False
        if self._wanted:
            self.finalize()

    def settle(self) -> None:
        """The exchange ended (a stream's last event is out, the server has yet to end the body):
        its upstream connection is let go, its record built, and the finalizers the client's next
        request must see run (the quota, the cache). Idempotent; :meth:`finalize` does the rest."""
        if self._settled:
            return
        if self._held:
            self._wanted = True
            return
        self._settled = True
        call = self.call
        if call.resp is not None:  # never read to its end: drop the upstream connection now
            call.resp.close()
            call.resp = None
        if call.release is not None:
            call.release()
            call.release = None
        if not call.complete and call.error is None:
            call.client_aborted = True
        try:
            record = self.build_record()
        except Exception:  # noqa: BLE001 - a cost function that broke: the record without a cost
            log.exception("usage record for %s: the cost could not be computed", self.request.request_id)
            self.cost_fn = None
            record = self.build_record()
        self.record = self._run(self._finalizers, record)

    def finalize(self) -> None:
        """Record the exchange: :meth:`settle` if it has not, then the finalizers that only need the
        record. A stream's body calls this once the server wrote its last byte (WSGI
        ``close``), so that work does not delay the end of the stream (a next request on the
        same connection is read after it). Idempotent: the first call records, later calls do
        nothing."""
        if self._done:
            return
        if self._held:
            self._wanted = True
            return
        self.settle()
        self._done = True
        if self._after and self.record is not None:
            self.record = self._run(self._after, self.record)

    def _run(self, finalizers: list[Callable[[UsageRecord], UsageRecord | None]], record: UsageRecord) -> UsageRecord:
        for fn in finalizers:
            try:
                record = fn(record) or record
            except Exception:  # noqa: BLE001 - accounting must never break the response
                log.exception("usage finalizer %r failed for %s", fn, self.request.request_id)
        return record
