"""Token counting with tiktoken's o200k_base, loaded offline from the bpe-openai package.

tiktoken downloads encodings on first use, which fails without internet. bpe-openai ships the same
`.tiktoken` files; we decompress the one we need into TIKTOKEN_CACHE_DIR under the file name
tiktoken looks for (the SHA-1 of its download URL), so tiktoken never touches the network.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import os
from collections.abc import Iterable
from pathlib import Path

import tiktoken
from django.conf import settings

ENCODING_NAME = "o200k_base"
_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def _install_encoding(name: str, cache_dir: Path) -> None:
    target = cache_dir / hashlib.sha1(_ENCODING_URLS[name].encode()).hexdigest()
    if target.exists():
        return
    packed = importlib.resources.files("bpe_openai") / "data" / f"{name}.tiktoken.gz"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never sees half a file.
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(gzip.decompress(packed.read_bytes()))
    partial.replace(target)


@functools.cache
def encoding(name: str = ENCODING_NAME) -> tiktoken.Encoding:
    cache_dir = Path(settings.TIKTOKEN_CACHE_DIR)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    _install_encoding(name, cache_dir)
    return tiktoken.get_encoding(name)


@functools.lru_cache(maxsize=2048)
def count_tokens(text: str) -> int:
    # Cached: system prompts and shared context repeat across a course's calls and re-counting
    # them was a visible part of a task's CPU in the profile.
    return len(encoding().encode(text, disallowed_special=()))


def chat_tokens(message_tokens: Iterable[int]) -> int:
    """A chat request's prompt tokens from its messages' own: OpenAI's chat format adds about 3
    tokens per message and 3 to prime the reply."""
    return sum(n + 3 for n in message_tokens) + 3


def count_message_tokens(messages: list[dict[str, str]]) -> int:
    return chat_tokens(text_tokens(m["content"]) for m in messages)


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


def paragraph_tokens(text: str) -> tuple[list[tuple[str, int]], int]:
    """`text`'s paragraphs with their (cached) token counts, and `text`'s own count: their sum
    when the cuts fall between tiktoken's pre-tokens (a blank line ends one unless the next
    paragraph `_joins_the_blank_line`), since BPE never merges across pre-tokens; else counted
    whole. A prompt is ~10 KB, mostly the guide and the course data that every call of a course
    repeats: counted whole it costs ~1 ms of CPU, uncached because each prompt as a whole is new."""
    parts = paragraphs(text)
    counted = [(part, count_tokens(part)) for part in parts]
    if len(parts) > 1 and any(map(_joins_the_blank_line, parts[1:])):
        return counted, count_tokens(text)
    return counted, sum(n for _, n in counted)


def text_tokens(text: str) -> int:
    """count_tokens(text), from its paragraphs' cached counts where that is exact."""
    return paragraph_tokens(text)[1]
