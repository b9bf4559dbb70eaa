"""Token usage of a simulated call, counted with tiktoken, and the emulated prompt cache."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

from generation.providers.base import CompletionRequest, Usage
from generation.tokens import count_message_tokens, count_tokens


class SeenPrefixes:
    """A small thread-safe LRU set of prompt-prefix hashes: the simulated provider-side cache."""

    def __init__(self, capacity: int = 4096) -> None:
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
    input_tokens = count_message_tokens([m.as_dict() for m in request.messages])
    return Usage(
        input_tokens=input_tokens,
        cached_tokens=min(cached_tokens(request, prefixes), input_tokens),
        output_tokens=count_tokens(raw_text),
    )


_PARAGRAPHS = re.compile(r"(?<=\n\n)")


def cached_tokens(request: CompletionRequest, prefixes: SeenPrefixes) -> int:
    """Like OpenAI: the longest repeated prefix of >= 1024 tokens is served from cache, in 128s.

    The prefix runs across messages (the guide in the system message, then the course data that
    opens every user message of a course); it is tried at each paragraph boundary."""
    digest = hashlib.sha256(request.model.encode())
    tokens = best = 0
    for message in request.messages:
        digest.update(f"\0{message.role}\0".encode())
        for paragraph in _PARAGRAPHS.split(message.content):
            digest.update(paragraph.encode())
            tokens += count_tokens(paragraph)  # cached: guide and course data repeat
            if tokens >= 1024 and prefixes.seen_before(digest.copy().hexdigest()):
                best = tokens
    return best // 128 * 128
