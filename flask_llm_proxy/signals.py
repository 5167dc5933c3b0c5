"""Blinker signals a host app can subscribe to (``signal.connect(fn, app)``).

All are sent with the Flask app as sender.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: once per proxied request, after it ended: ``record=`` a :class:`~flask_llm_proxy.exchange.UsageRecord`
usage_recorded = _signals.signal("flask_llm_proxy.usage_recorded")
#: before each retry of an upstream call: ``request_id=``, ``error=`` (the failure being retried)
upstream_retry = _signals.signal("flask_llm_proxy.upstream_retry")
