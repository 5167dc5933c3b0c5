"""One proxied request from validation to its last byte, and the record it leaves behind.

An :class:`Exchange` is created once a request passed validation; whatever happens after (a
complete stream, an upstream error, a timeout, a browser that left) it is finalized exactly
once, which is what makes the usage ledger, quotas, budgets and metrics add up.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import ProxyError, scrub

if TYPE_CHECKING:
    import requests

    from .body import UpstreamBody
    from .providers.base import Translator

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
    cached: bool
    timestamp: float = 0.0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    endpoint: str = "chat"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Exchange:
    __slots__ = (
        "request_id", "identity", "provider", "model", "endpoint", "started", "wall_started",
        "ttfb_ms", "retries", "status", "error", "complete", "client_aborted", "tokens_streamed",
        "translator", "resp", "input_chars", "text_parts", "_finalizers", "_done", "record", "cost_fn", "secrets",
    )

    def __init__(self, request_id: str, identity: str, provider: str, model: str, started: float, *, input_chars: int = 0, keep_text: bool = False, endpoint: str = "chat") -> None:
        self.request_id = request_id
        self.identity = identity
        self.provider = provider
        self.model = model
        self.endpoint = endpoint
        self.started = started
        self.wall_started = time.time()
        self.ttfb_ms: float | None = None
        self.retries = 0
        self.status = 200
        self.error: ProxyError | None = None
        self.complete = False
        self.client_aborted = False
        self.tokens_streamed = 0
        self.translator: Translator | None = None
        self.resp: requests.Response | UpstreamBody | None = None  # open upstream answer; closed at finalize
        self.input_chars = input_chars
        self.text_parts: list[str] | None = [] if keep_text else None
        self._finalizers: list[Callable[[UsageRecord], None]] = []
        self._done = False
        self.record: UsageRecord | None = None
        self.cost_fn: Callable[..., float | None] | None = None
        self.secrets: tuple[str, ...] = ()  # the provider's key and credential headers (config.provider_secrets)

    def fail(self, err: ProxyError, *, before_stream: bool = False) -> None:
        """Every failure the client is told of passes here: an upstream's message (an error event in
        its stream may quote the request) loses the provider's secrets."""
        if self.secrets:
            err.message = scrub(err.message, self.secrets)
        self.error = err
        if before_stream:
            self.status = err.status

    def on_finalize(self, fn: Callable[[UsageRecord], None]) -> None:
        self._finalizers.append(fn)

    def build_record(self) -> UsageRecord:
        t = self.translator
        input_tokens = output_tokens = cache_read = cache_write = 0
        reported = False
        finish = None
        if t is not None:
            u = t.usage
            input_tokens, output_tokens = u.input_tokens, u.output_tokens
            cache_read, cache_write = u.cache_read, u.cache_write
            reported = u.reported
            finish = t.finish_reason
        estimated = t is not None and not reported
        if estimated:
            # Cut before the upstream's final counts (documented in the README): input from the
            # prompt size when the upstream never said it, output as the larger of what the
            # upstream said and the number of deltas relayed.
            if not input_tokens:
                input_tokens = max(1, self.input_chars // CHARS_PER_TOKEN)
            output_tokens = max(output_tokens, self.tokens_streamed)
        cost = self.cost_fn(self.model, input_tokens, output_tokens, cache_read, cache_write) if self.cost_fn and t is not None else None
        error_type = self.error.type if self.error is not None else ("client_closed" if self.client_aborted else None)
        return UsageRecord(
            request_id=self.request_id,
            identity=self.identity,
            provider=self.provider,
            model=self.model,
            input_tokens=int(input_tokens),
            output_tokens=int(output_tokens),
            estimated=estimated,
            cost_usd=cost,
            status=self.status,
            error_type=error_type,
            ttfb_ms=self.ttfb_ms,
            duration_ms=round((time.perf_counter() - self.started) * 1000.0, 1),
            retries=self.retries,
            finish_reason=finish if self.complete else None,
            cached=cache_read > 0,
            timestamp=self.wall_started,
            cache_read_tokens=int(cache_read),
            cache_write_tokens=int(cache_write),
            endpoint=self.endpoint,
        )

    def finalize(self) -> None:
        """Idempotent: the first call records, later calls do nothing."""
        if self._done:
            return
        self._done = True
        if self.resp is not None:  # never read to its end: drop the upstream connection now
            self.resp.close()
            self.resp = None
        if not self.complete and self.error is None:
            self.client_aborted = True
        try:
            record = self.build_record()
        except Exception:  # noqa: BLE001 - a cost function that broke: the record without a cost
            log.exception("usage record for %s: the cost could not be computed", self.request_id)
            self.cost_fn = None
            record = self.build_record()
        for fn in self._finalizers:
            try:
                record = fn(record) or record  # type: ignore[func-returns-value]
            except Exception:  # noqa: BLE001 - accounting must never break the response
                log.exception("usage finalizer %r failed for %s", fn, self.request_id)
        self.record = record
