"""Token usage of a simulated call, counted with tiktoken, and the emulated prompt cache."""

from __future__ import annotations

import threading
from collections import OrderedDict

from generation.providers.base import CompletionRequest, Usage
from generation.tokens import chat_tokens, count_tokens, paragraph_tokens


class SeenPrefixes:
    """A small thread-safe LRU set of prompt-prefix hashes: the simulated provider-side cache."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, keys: list[int]) -> list[bool]:
        """Record `keys` (one lock for all) and say of each whether it was already there."""
        with self._lock:
            seen = [key in self._keys for key in keys]
            for key in keys:
                self._keys[key] = None
                self._keys.move_to_end(key)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
            return seen


def usage_of(request: CompletionRequest, raw_text: str, prefixes: SeenPrefixes) -> Usage:
    # Each message cut into counted paragraphs once: their sums give the prompt's tokens, their
    # running totals the cacheable prefixes.
    messages = [(m.role, *paragraph_tokens(m.content)) for m in request.messages]
    input_tokens = chat_tokens(total for _, _, total in messages)
    return Usage(
        input_tokens=input_tokens,
        cached_tokens=min(cached_tokens(request.model, messages, prefixes), input_tokens),
        output_tokens=count_tokens(raw_text),
    )


def cached_tokens(
    model: str,
    messages: list[tuple[str, list[tuple[str, int]], int]],
    prefixes: SeenPrefixes,
) -> int:
    """Like OpenAI: the longest repeated prefix of >= 1024 tokens is served from cache, in 128s.

    The prefix runs across messages (the guide in the system message, then the course data that
    opens every user message of a course); it is tried at each paragraph boundary. `messages`
    holds each message's role, counted paragraphs and total, as `paragraph_tokens` gives them."""
    # A prefix's key chains Python's hash of each part onto the key before it (cheaper than a
    # SHA-256 per boundary): the cache lives in this process only, so one hash seed keys it all.
    key = hash(model)
    tokens = 0
    boundaries: list[tuple[int, int]] = []  # (key, tokens so far) at each paragraph's end
    for role, counted, _ in messages:
        key = hash((key, role))
        for paragraph, n in counted:
            key = hash((key, paragraph))
            tokens += n
            if tokens >= 1024:
                boundaries.append((key, tokens))
    seen = prefixes.record([k for k, _ in boundaries])
    best = max((n for (_, n), hit in zip(boundaries, seen, strict=True) if hit), default=0)
    return best // 128 * 128
