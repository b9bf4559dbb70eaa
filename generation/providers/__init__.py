"""Provider registry: `get_provider()` returns the configured provider, one per process."""

from __future__ import annotations

import functools

from django.conf import settings

from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    PermanentProviderError,
    Provider,
    ProviderError,
    TransientProviderError,
    Usage,
)

__all__ = [
    "Completion",
    "CompletionRequest",
    "InvalidOutputError",
    "Message",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "TransientProviderError",
    "Usage",
    "get_provider",
]


@functools.cache
def get_provider(name: str | None = None) -> Provider:
    name = name or settings.COURSEGEN_PROVIDER
    if name == "offline":
        from generation.providers.offline import OfflineProvider

        return OfflineProvider.from_settings()
    if name == "openai":
        from generation.providers.openai import OpenAIProvider

        return OpenAIProvider.from_settings()
    raise ValueError(f"unknown provider {name!r}")
