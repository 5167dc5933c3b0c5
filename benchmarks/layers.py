"""A streamed upstream response read to one layer of the token path, for the benchmarks that
measure what each layer costs (``token_path.py``, ``paced_layers.py``).

Imports the proxy when called, not at import: ``token_path.py`` puts the code it measures on
``sys.path`` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: the layers, from the network up: each reads through the ones before it
LAYERS = ("urllib3", "iter_content", "iter_lines", "events", "body")


def read_to(layer: str, resp: Any) -> Iterator[Any]:
    """What ``layer`` hands on: urllib3's reads, requests' chunks or lines, the SSE events, or
    (``body``) the batches of :class:`~flask_llm_proxy.upstream.body.UpstreamBody` as the relay
    takes them."""
    from flask_llm_proxy.upstream.body import UpstreamBody, body_lines
    from flask_llm_proxy.upstream.sse import events

    if layer == "urllib3":
        return resp.raw.stream(None, decode_content=True)
    if layer == "iter_content":
        return resp.iter_content(None)
    if layer == "iter_lines":
        return resp.iter_lines(None)
    if layer == "events":
        return events(body_lines(resp))
    return _relayed(UpstreamBody(resp, 15.0))


def _relayed(body: Any) -> Iterator[Any]:
    """The non-empty batches of ``body``, eager until the first one, as the relay turns it off
    once its first token is out."""
    for batch in body:
        if batch:
            body.eager = False
            yield batch
