"""Every ``LLM_PROXY_*`` key: its default, the type a user writes, what it means, and its check.

One :class:`Key` per setting, in the order the documentation lists them: ``init_app`` applies the
defaults and the checks from :data:`KEYS`, and ``docs/configuration.rst`` is generated from it,
so the code and the reference cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from . import checks
from .origins import cors_origins

PREFIX = "LLM_PROXY_"


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    type: str  #: what a user writes, for the docs
    doc: str  #: what it means (reStructuredText), for the docs
    check: Callable[[str, Any], Any]  #: (key, value) -> parsed value, or ConfigError
    group: str = "general"

    @property
    def attr(self) -> str:
        """The :class:`~flask_llm_proxy.config.Settings` attribute holding the parsed value."""
        return self.name[len(PREFIX) :].lower()


def _positive(name: str, v: Any) -> int:
    return checks.integer(name, v, minimum=1)  # type: ignore[return-value]


def _optional_positive(name: str, v: Any) -> int | None:
    return checks.integer(name, v, minimum=1, optional=True)


def _seconds(minimum: float = 0.0) -> Callable[[str, Any], float]:
    return lambda name, v: checks.number(name, v, minimum=minimum)  # type: ignore[return-value]


def _optional_seconds(name: str, v: Any) -> float | None:
    return checks.number(name, v, optional=True) or None  # 0 turns it off, as None does


def _claim(name: str, v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise ConfigError(name, "expected a claim name or None")
    return v or None


def _optional_name(name: str, v: Any) -> str | None:
    if v is not None and (not isinstance(v, str) or any(c.isspace() or c == "|" for c in v)):
        raise ConfigError(name, "expected a name without spaces or '|', or None")
    return v or None


def _providers_later(name: str, v: Any) -> Any:
    return v  # needs the environment: parsed by load_settings (config/providers.py)


# one line per key where it fits, as the reference lists them
# fmt: off
KEYS: tuple[Key, ...] = (
    # --- providers and requests
    Key("LLM_PROXY_PROVIDERS", {}, "dict", "The providers: ``{name: options}``; each becomes ``POST <prefix>/<name>``. "
        "See :ref:`providers` for the options of an entry.", _providers_later, "providers"),
    Key("LLM_PROXY_URL_PREFIX", "/api", "str", "Where the blueprint is mounted (``/`` for the root).", checks.url_prefix, "providers"),
    Key("LLM_PROXY_MAX_BODY_BYTES", 8 * 1024 * 1024, "int", "Largest request body accepted; larger ones get 413 "
        "(also chunked ones, without reading them whole).", _positive, "requests"),
    Key("LLM_PROXY_MAX_MESSAGES", 500, "int", "Messages (or Responses ``input`` items) per request.", _positive, "requests"),
    Key("LLM_PROXY_DEFAULT_MAX_TOKENS", 1024, "int", "``max_tokens`` sent to Anthropic when the client sends none "
        "(Anthropic requires one), limited by the caps below.", _positive, "requests"),
    Key("LLM_PROXY_MAX_TOKENS", 32768, "int or None", "Cap on requested output tokens; a request above it gets 400. "
        "A provider's own ``max_tokens`` is applied when stricter. The default bounds what one request can cost and "
        "how long it streams (32,768 tokens at 60-100 tokens/s is 5-9 minutes, inside ``LLM_PROXY_MAX_STREAM_SECONDS``) "
        "while staying above what chat answers need; ``None`` forwards any value.", _optional_positive, "requests"),
    Key("LLM_PROXY_MAX_STREAM_SECONDS", 600.0, "float (s) or None", "Longest a request may run; a stream past it ends "
        "with an ``error:`` line (``code`` ``TIMEOUT``; the native endpoints: their error event) and is recorded "
        "as ``timeout``. Checked once a second; ``None`` disables.", _optional_seconds, "requests"),
    Key("LLM_PROXY_MAX_STREAMS_PER_WORKER", None, "int or None", "Requests one worker process serves at once; past it a "
        "new one gets 503 ``overloaded`` with ``Retry-After`` at once. ``None``: gunicorn's ``worker_connections`` "
        "(when ``flask_llm_proxy.gunicorn.post_worker_init`` told it, else gunicorn's default of 1000) minus a tenth "
        "(at least 10) kept for health checks and the 503s themselves; ``0``: no limit.",
        lambda n, v: checks.integer(n, v, optional=True), "requests"),
    # --- the upstream call
    Key("LLM_PROXY_MAX_RETRIES", 2, "int", "Retries before the first byte (3 attempts in all); ``0`` disables, at most ``10``.",
        lambda n, v: checks.integer(n, v, maximum=10), "upstream"),
    Key("LLM_PROXY_RETRY_BACKOFF", 1.0, "float (s)", "Seconds before the first retry, doubling each time.", _seconds(), "upstream"),
    Key("LLM_PROXY_RETRY_AFTER_MAX", 20.0, "float (s)", "Longest upstream ``retry-after`` honoured; a longer one is passed "
        "to the client instead.", _seconds(), "upstream"),
    Key("LLM_PROXY_CONNECT_TIMEOUT", 10.0, "float (s)", "Seconds to connect to the upstream.", _seconds(0.001), "upstream"),
    Key("LLM_PROXY_READ_TIMEOUT", 60.0, "float (s)", "Seconds of upstream silence (before its headers or between two "
        "reads) that end a request with ``timeout``.", _seconds(0.001), "upstream"),
    Key("LLM_PROXY_KEEPALIVE", 15.0, "float (s) or None", "Send ``: ping`` after this many seconds of upstream silence, so "
        "load balancers keep the connection and a browser that left is noticed; ``None`` disables.", _optional_seconds, "upstream"),
    Key("LLM_PROXY_COOLDOWN", 30.0, "float (s)", "How long a provider's deployment that failed before the first byte "
        "(429, 529, 5xx, unreachable) is left alone when it sent no ``Retry-After`` (providers with several "
        "``deployments`` only).", _seconds(), "upstream"),
    Key("LLM_PROXY_FALLBACKS", {}, "dict", "Per provider, an ordered list of ``\"provider:model\"`` a request may move to "
        "when every deployment of its own provider failed before the first byte, e.g. "
        "``{\"anthropic\": [\"openai:gpt-4o\"]}``; empty: none.", _providers_later, "upstream"),
    Key("LLM_PROXY_POOL_MAXSIZE", 10000, "int", "Idle upstream connections kept per host per process; at least gunicorn's "
        "``worker_connections``, or connections are closed and reopened under load.", _positive, "upstream"),
    # --- access
    Key("LLM_PROXY_REQUIRE_AUTH", True, "bool", "Require a JWT (the host's ``JWTManager``). ``False``: a valid JWT still names "
        "the identity; without one the identity is the client address.", checks.boolean, "access"),
    Key("LLM_PROXY_PUBLIC_HEALTH", False, "bool", "Serve ``<prefix>/health`` without auth.", checks.boolean, "access"),
    Key("LLM_PROXY_MODELS_CLAIM", "llm_models", "str or None", "JWT claim listing the models (names or patterns) a user may "
        "call; ``None`` disables.", _claim, "access"),
    Key("LLM_PROXY_TRUSTED_PROXIES", 0, "int", "Reverse-proxy hops whose ``X-Forwarded-For`` is trusted for the client address.",
        checks.integer, "access"),
    Key("LLM_PROXY_RATE_LIMIT", "60/minute", "str or None", "Requests per identity (flask-limiter syntax, ``;`` between several "
        "limits); ``None`` disables.", checks.rate, "access"),
    Key("LLM_PROXY_TOKEN_QUOTA", None, "str or None", "Input + output tokens per identity, e.g. ``\"200000/day\"``.", checks.rate, "access"),
    Key("LLM_PROXY_FAIL_OPEN", False, "bool", "When the limits' storage (Redis) is down: ``False`` answers 503, ``True`` serves "
        "unmetered (logged).", checks.boolean, "access"),
    Key("LLM_PROXY_PROFILES", {}, "dict", "Server-side presets a request names with ``POST <prefix>/profiles/<name>``: "
        "the provider and models, the system prompt, the tools and caps the browser may use. See :ref:`profiles`.",
        _providers_later, "access"),
    Key("LLM_PROXY_REQUIRE_PROFILE", False, "bool", "Refuse requests that name no profile (``403 profile_required``): the "
        "browser can only use the purposes the host defined.", checks.boolean, "access"),
    Key("LLM_PROXY_PROFILES_CLAIM", "llm_profiles", "str or None", "JWT claim listing the profiles (names or patterns) a user "
        "may use; a token without it may use every profile. ``None`` disables.", _claim, "access"),
    Key("LLM_PROXY_CORS_ORIGINS", [], "list of str", "Exact origins (``scheme://host[:port]``) or regular expressions allowed "
        "cross-origin; empty: no CORS headers.", cors_origins, "access"),
    Key("LLM_PROXY_CORS_CREDENTIALS", False, "bool", "``Access-Control-Allow-Credentials``; refused together with ``*``.",
        checks.boolean, "access"),
    Key("LLM_PROXY_CORS_MAX_AGE", 600, "int (s)", "Seconds a browser may cache a preflight.", checks.integer, "access"),
    # --- accounting
    Key("LLM_PROXY_PRICING", {}, "dict", "Prices in USD per million tokens (exact names or patterns), looked up before the "
        "shipped table; ``None`` marks a model unpriced.", checks.pricing, "accounting"),
    Key("LLM_PROXY_USAGE_STORE", None, "str or None", "The usage ledger: ``None`` = ``sqlite:///<instance>/llm_proxy_usage.sqlite3``, "
        "``sqlite:///path``, ``redis://...``, or ``none``.", checks.usage_store, "accounting"),
    Key("LLM_PROXY_USAGE_STREAM_MAXLEN", 1_000_000, "int or None", "Records kept in the Redis store's stream "
        "``llm_proxy:usage`` (trimmed approximately); ``None`` never trims. Budgets do not read the stream.",
        _optional_positive, "accounting"),
    Key("LLM_PROXY_WRITE_AHEAD", True, "bool", "Keep an in-flight record of each request in the usage store while it "
        "runs, so that a worker that dies (SIGKILL, out of memory) still leaves a ``worker_lost`` record of it.",
        checks.boolean, "accounting"),
    Key("LLM_PROXY_WORKER_LEASE", 60.0, "float (s)", "In-flight records of a worker not renewed for this long are "
        "closed as ``worker_lost`` by any worker of any host (a whole host that died).", _seconds(1.0), "accounting"),
    Key("LLM_PROXY_HOST_NAME", None, "str or None", "This host's name in in-flight records (``None``: the machine's "
        "host name); workers of one host check each other's processes, other hosts wait for the lease.",
        _optional_name, "accounting"),
    Key("LLM_PROXY_BUDGETS", {}, "dict", "Spend limits per identity, e.g. ``{\"default\": {\"daily_usd\": 5.0}}``; keys "
        "``daily_usd``, ``monthly_usd``, ``daily_tokens``, ``monthly_tokens``.", checks.budgets, "accounting"),
    Key("LLM_PROXY_METRICS", False, "bool", "Serve Prometheus metrics at ``<prefix>/metrics``.", checks.boolean, "accounting"),
    Key("LLM_PROXY_METRICS_ALLOW", [], "list of str", "Client addresses or CIDR networks allowed to read ``/metrics``; empty: "
        "anyone (protect it yourself).", checks.addresses, "accounting"),
    Key("LLM_PROXY_LOG_CONTENT", False, "bool", "Include prompt and completion text in the request log line.", checks.boolean, "accounting"),
    # --- response cache
    Key("LLM_PROXY_CACHE_URL", None, "str or None", "The response cache: ``None`` (off), ``memory://`` (per process, an LRU "
        "of 64 MiB; ``memory://?size=<bytes>``) or ``redis://host:port/db`` (``rediss://``, ``unix://``) for a fleet.",
        checks.cache_url, "cache"),
    Key("LLM_PROXY_CACHE_TTL", 3600, "int (s)", "Seconds a stored answer is served.", _positive, "cache"),
    Key("LLM_PROXY_CACHE_SCOPE", "identity", "str", "``identity``: a user is only ever served answers to their own "
        "requests; ``shared``: one cache for every user.", checks.one_of("identity", "shared"), "cache"),
    Key("LLM_PROXY_CACHE_MAX_BYTES", 1024 * 1024, "int", "Largest answer stored (encoded); larger ones are served live and "
        "not stored.", _positive, "cache"),
    # --- queue: a fleet-wide concurrency cap with a bounded wait
    Key("LLM_PROXY_MAX_CONCURRENT", None, "int, dict or None", "Most upstream calls in flight at once across the fleet: one "
        "number for each provider, or ``{provider: number}``; ``None``: no cap. Past it, requests wait their turn.",
        checks.concurrency, "queue"),
    Key("LLM_PROXY_MAX_CONCURRENT_PER_USER", None, "int or None", "Most upstream calls one identity has in flight at once.",
        _optional_positive, "queue"),
    Key("LLM_PROXY_QUEUE_TIMEOUT", 30.0, "float (s)", "Longest wait for a slot; then 503 ``queue_timeout`` with ``Retry-After``.",
        _seconds(0.0), "queue"),
    Key("LLM_PROXY_QUEUE_URL", None, "str or None", "Where slots are counted: ``redis://...`` (the fleet), ``memory://`` (this "
        "process). ``None``: the limiter's Redis when ``RATELIMIT_STORAGE_URI`` is one, else this process (a warning).",
        checks.queue_url, "queue"),
    Key("LLM_PROXY_QUEUE_LEASE", 10.0, "float (s)", "A slot is a lease renewed while its stream runs: a worker that dies "
        "(SIGKILL, OOM) gives its slots back within this many seconds. 1 to 30.",
        lambda n, v: checks.number(n, v, minimum=1.0, maximum=30.0), "queue"),
    # --- the operator page
    Key("LLM_PROXY_ADMIN", False, "bool", "Serve the operator page at ``<prefix>/admin`` and its figures at "
        "``<prefix>/admin/summary.json`` (and ``summary.csv``); see :doc:`admin`.", checks.boolean, "admin"),
    Key("LLM_PROXY_ADMIN_CLAIM", "llm_proxy_admin", "str or None", "JWT claim that must be ``true`` to read the operator "
        "figures, unless ``@proxy.admin_required`` decides; ``None``: only the callback admits anyone.", _claim, "admin"),
)
# fmt: on

BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
#: key -> default, as ``init_app`` applies them with ``app.config.setdefault``
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KEYS}
