"""The built-in offline provider: deterministic text at a configurable length and pace.

It needs no network and no key, so the example app runs on a fresh machine and a host app's own
tests can exercise auth, limits, streaming and accounting end to end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..config import ProviderConfig
from ..contract.request import ChatRequest
from .base import Translator

DEFAULT_TEXT = "This is a reply from the mock provider of flask-llm-proxy, streamed one word at a time."


def mock_words(provider: ProviderConfig, count: int) -> list[str]:
    words = (provider.mock_text or DEFAULT_TEXT).split(" ")
    return [(w if i == 0 else " " + w) for i, w in ((i, words[i % len(words)]) for i in range(count))]


class MockSource:
    """Stands in for an upstream response: yields item lists, fills in usage like a real one."""

    def __init__(self, provider: ProviderConfig, req: ChatRequest) -> None:
        self.translator = Translator()
        count = provider.mock_tokens
        if req.max_tokens is not None:
            count = min(count, req.max_tokens)
        self.words = mock_words(provider, count)
        self.pace = provider.mock_pace_ms / 1000.0
        self.translator.usage.input_tokens = max(1, req.input_size_hint() // 4)
        self.length_capped = count < provider.mock_tokens

    def __iter__(self) -> Iterator[list[Any]]:
        t = self.translator
        for i, word in enumerate(self.words):
            if i and self.pace:
                time.sleep(self.pace)
            t.usage.output_tokens = i + 1
            yield [word]
        t.usage.reported = True
        t.finish_reason = "length" if self.length_capped else "stop"
        t.done = True

    def close(self) -> None:
        pass
