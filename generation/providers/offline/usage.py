"""Token usage of a simulated call, counted with tiktoken, and the emulated prompt cache."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from generation.providers.base import CompletionRequest, Usage
from generation.tokens import count_message_tokens, count_tokens


class SeenPrefixes:
    """A small thread-safe LRU set of prompt-prefix hashes: the simulated provider-side cache."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen_before(self, key: str) -> bool:
        """Record `key` and say whether it was already there."""
        with self._lock:
            seen = key in self._keys
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
            return seen


def usage_of(request: CompletionRequest, raw_text: str, prefixes: SeenPrefixes) -> Usage:
    return Usage(
        input_tokens=count_message_tokens([m.as_dict() for m in request.messages]),
        cached_tokens=cached_tokens(request, prefixes),
        output_tokens=count_tokens(raw_text),
    )


def cached_tokens(request: CompletionRequest, prefixes: SeenPrefixes) -> int:
    """Like OpenAI: a repeated prefix of >= 1024 tokens is served from cache in 128s."""
    if not request.messages or request.messages[0].role != "system":
        return 0
    system = request.messages[0].content
    tokens = count_tokens(system)
    if tokens < 1024:
        return 0
    key = hashlib.sha256(f"{request.model}\0{system}".encode()).hexdigest()
    return tokens // 128 * 128 if prefixes.seen_before(key) else 0
