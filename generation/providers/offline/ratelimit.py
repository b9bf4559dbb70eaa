"""Rate-limit emulation: the provider's per-model request and token buckets (shared through
Redis when one is configured), answering 429 with retry-after when a bucket is short."""

from __future__ import annotations

import time

from django.conf import settings

from coursegen.cache import redis_client
from generation.providers.base import TransientProviderError, Usage
from generation.providers.ratelimit import ProviderRateLimit


def rate_limit_from_settings() -> ProviderRateLimit | None:
    rpm, tpm = settings.COURSEGEN_OFFLINE_RPM, settings.COURSEGEN_OFFLINE_TPM
    if not rpm and not tpm:
        return None
    client = redis_client(settings.REDIS_URL) if settings.REDIS_URL else None
    return ProviderRateLimit(rpm=rpm, tpm=tpm, client=client)


def admit(
    rate_limit: ProviderRateLimit | None, model: str, usage: Usage, started: float
) -> dict[str, str]:
    """The emulated provider rate limit: its headers, or a 429 when a bucket is short."""
    if rate_limit is None:
        return {}
    admission = rate_limit.take(model, usage.input_tokens + usage.output_tokens)
    if not admission.admitted:
        raise TransientProviderError(
            f"simulated provider rate limit for {model} (429 Too Many Requests)",
            status_code=429,
            retry_after=admission.retry_after_s,
            latency_s=time.perf_counter() - started,
        )
    return admission.headers
