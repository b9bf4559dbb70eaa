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


def count_message_tokens(messages: list[dict[str, str]]) -> int:
    # OpenAI's chat format adds about 3 tokens per message and 3 to prime the reply.
    return sum(count_tokens(m["content"]) + 3 for m in messages) + 3
