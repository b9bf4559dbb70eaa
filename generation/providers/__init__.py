"""Provider registry: `get_provider()` returns the configured provider, one per process."""

from __future__ import annotations

import functools

from django.conf import settings

from generation.providers.base import (
    BATCH_ENDED,
    BATCH_KEY,
    MODERATION_CATEGORIES,
    BatchLine,
    BatchLineResult,
    BatchState,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResult,
    InvalidOutputError,
    Message,
    ModerationRequest,
    ModerationResult,
    PermanentProviderError,
    Provider,
    ProviderError,
    TransientProviderError,
    Usage,
)

__all__ = [
    "BATCH_ENDED",
    "BATCH_KEY",
    "MODERATION_CATEGORIES",
    "BatchLine",
    "BatchLineResult",
    "BatchState",
    "Completion",
    "CompletionRequest",
    "EmbeddingRequest",
    "EmbeddingResult",
    "InvalidOutputError",
    "Message",
    "ModerationRequest",
    "ModerationResult",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "TransientProviderError",
    "Usage",
    "get_embedding_provider",
    "get_moderation_provider",
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


def get_moderation_provider() -> Provider | None:
    """The provider that moderates requests and generated content; None when moderation is off
    (COURSEGEN_MODERATION_PROVIDER=off, never for a school). "" means the generation provider."""
    name = settings.COURSEGEN_MODERATION_PROVIDER
    if name == "off":
        return None
    return get_provider(name or None)


# The embeddings model each embeddings provider uses when COURSEGEN_EMBEDDING_MODEL is empty.
DEFAULT_EMBEDDING_MODELS = {
    "local": "all-MiniLM-L6-v2-onnx-int8",
    "openai": "text-embedding-3-small",
}


@functools.cache
def _local_embeddings() -> Provider:
    from generation.providers.local_embeddings import LocalEmbeddingProvider

    return LocalEmbeddingProvider()


def get_embedding_provider() -> tuple[Provider, str] | None:
    """The provider and model that embed for the cache's similarity layer; None when it is off
    (COURSEGEN_EMBEDDING_PROVIDER=off)."""
    name = settings.COURSEGEN_EMBEDDING_PROVIDER
    if name == "off":
        return None
    model = settings.COURSEGEN_EMBEDDING_MODEL or DEFAULT_EMBEDDING_MODELS[name]
    return (_local_embeddings() if name == "local" else get_provider("openai")), model
