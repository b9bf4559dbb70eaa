"""Token usage of a simulated call, counted with tiktoken, and the emulated prompt cache."""

from __future__ import annotations

import threading
from collections import OrderedDict

from generation.providers.base import CompletionRequest, Usage
from generation.tokens import count_tokens


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
    # As count_message_tokens counts them (3 per message and 3 to prime the reply), each
    # message's tokens summed from its paragraphs' where that is exact (text_tokens).
    input_tokens = sum(text_tokens(m.content) + 3 for m in request.messages) + 3
    return Usage(
        input_tokens=input_tokens,
        cached_tokens=min(cached_tokens(request, prefixes), input_tokens),
        output_tokens=count_tokens(raw_text),
    )


def paragraphs(text: str) -> list[str]:
    """`text` cut after every blank line ("\\n\\n", overlapping runs included), as
    `re.split(r"(?<=\\n\\n)", text)` cuts it: that lookbehind tried at every character was most of
    a simulated call's CPU."""
    parts: list[str] = []
    start, at = 0, text.find("\n\n")
    while at != -1:
        parts.append(text[start : at + 2])
        start = at + 2
        at = text.find("\n\n", at + 1)
    parts.append(text[start:])
    return parts


def _joins_the_blank_line(part: str) -> bool:
    """Whether a paragraph's start may join the blank line before it into one pre-token of
    o200k_base: whitespace ("\\n\\n  \\n" is one) or a slash (".\\n\\n/" is one)."""
    return part[:1].isspace() or part.startswith("/")


def text_tokens(text: str) -> int:
    """count_tokens(text), summed from the cached counts of its paragraphs when the cuts fall
    between tiktoken's pre-tokens (a blank line ends one unless the next paragraph
    `_joins_the_blank_line`), since BPE never merges across pre-tokens. A call's messages are
    ~10 KB, mostly the guide and the course data that every call of a course repeats: counted
    whole they cost ~1 ms of CPU a call, uncached because each message as a whole is new."""
    parts = paragraphs(text)
    if len(parts) == 1 or any(map(_joins_the_blank_line, parts[1:])):
        return count_tokens(text)
    return sum(count_tokens(part) for part in parts)


def cached_tokens(request: CompletionRequest, prefixes: SeenPrefixes) -> int:
    """Like OpenAI: the longest repeated prefix of >= 1024 tokens is served from cache, in 128s.

    The prefix runs across messages (the guide in the system message, then the course data that
    opens every user message of a course); it is tried at each paragraph boundary."""
    # A prefix's key chains Python's hash of each part onto the key before it (cheaper than a
    # SHA-256 per boundary): the cache lives in this process only, so one hash seed keys it all.
    key = hash(request.model)
    tokens = 0
    boundaries: list[tuple[int, int]] = []  # (key, tokens so far) at each paragraph's end
    for message in request.messages:
        key = hash((key, message.role))
        for paragraph in paragraphs(message.content):
            key = hash((key, paragraph))
            tokens += count_tokens(paragraph)  # cached: guide and course data repeat
            if tokens >= 1024:
                boundaries.append((key, tokens))
    seen = prefixes.record([k for k, _ in boundaries])
    best = max((n for (_, n), hit in zip(boundaries, seen, strict=True) if hit), default=0)
    return best // 128 * 128
