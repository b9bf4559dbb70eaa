"""The offline provider's emulated rate limit (requests and tokens per minute, OpenAI's headers),
and the AIMD limiter backing off against it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.conf import settings

from coursegen.cache import redis_client
from generation import concurrency
from generation.concurrency import call_limited
from generation.providers.base import CompletionRequest, Message, TransientProviderError
from generation.providers.offline import OfflineProvider
from generation.providers.ratelimit import ProviderRateLimit, bucket_key
from generation.schemas import MindMap, TaskKind, Tier


def _shared(rpm: int = 0, tpm: int = 0) -> ProviderRateLimit:
    return ProviderRateLimit(rpm=rpm, tpm=tpm, client=redis_client(settings.REDIS_URL))


def _request(model: str = "gpt-4.1-nano") -> CompletionRequest:
    return CompletionRequest(
        messages=(Message("user", "A mind map, please."),),
        schema=MindMap,
        model=model,
        tier=Tier.SIMPLE,
        task_kind=TaskKind.MIND_MAP,
        context={"topic": "Tides", "modules": [], "num_modules": 1},
    )


@pytest.mark.parametrize("shared", [True, False])
def test_it_answers_with_openais_rate_limit_headers(shared: bool) -> None:
    limit = _shared(rpm=60, tpm=10_000) if shared else ProviderRateLimit(rpm=60, tpm=10_000)

    admission = limit.take("m", 400)

    assert admission.admitted
    assert admission.headers["x-ratelimit-limit-requests"] == "60"
    assert admission.headers["x-ratelimit-remaining-requests"] == "59"
    assert admission.headers["x-ratelimit-limit-tokens"] == "10000"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "9600"
    assert admission.headers["x-ratelimit-reset-requests"] == "1s"  # one request refills in 1 s
    assert admission.headers["x-ratelimit-reset-tokens"] == "2.4s"


@pytest.mark.parametrize("shared", [True, False])
def test_it_refuses_calls_over_the_requests_per_minute(shared: bool) -> None:
    limit = _shared(rpm=3) if shared else ProviderRateLimit(rpm=3, tpm=0)

    results = [limit.take("m", 10) for _ in range(4)]

    assert [r.admitted for r in results] == [True, True, True, False]
    assert 15 < results[-1].retry_after_s <= 20  # one request refills in 60 / 3 s
    assert results[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert "retry-after-ms" in results[-1].headers


def test_the_shared_buckets_count_calls_admitted_and_refused() -> None:
    """What `make bench`'s ratelimited phase reads: calls admitted and refused per model."""
    limit = _shared(rpm=2)

    for _ in range(3):
        limit.take("counted", 10)

    counts = redis_client(settings.REDIS_URL).hmget(bucket_key("counted"), ["admitted", "refused"])
    assert counts == [b"2", b"1"]


def test_it_shares_one_limit_between_processes() -> None:
    here, there = _shared(rpm=2), _shared(rpm=2)  # two worker processes, one provider

    assert here.take("m", 1).admitted and there.take("m", 1).admitted
    assert not here.take("m", 1).admitted and not there.take("m", 1).admitted
    assert _shared(rpm=2).take("other-model", 1).admitted  # limits are per model


def test_it_counts_tokens_per_minute_and_refills_over_time() -> None:
    limit = _shared(tpm=6_000)  # 100 tokens a second

    assert limit.take("m", 5_000).admitted
    refused = limit.take("m", 2_000)
    time.sleep(0.5)

    assert not refused.admitted and refused.retry_after_s > 5
    assert limit.take("m", 1_000).admitted  # 1,000 left plus about 50 refilled


def test_the_offline_provider_returns_the_headers_and_429s(settings: Any) -> None:
    provider = OfflineProvider(rate_limit=_shared(rpm=2))

    first = provider.complete(_request())
    provider.complete(_request())
    with pytest.raises(TransientProviderError) as refused:
        provider.complete(_request())

    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert refused.value.status_code == 429 and refused.value.retry_after


def test_the_provider_is_built_from_settings(settings: Any) -> None:
    settings.COURSEGEN_OFFLINE_RPM, settings.COURSEGEN_OFFLINE_TPM = 100, 0

    provider = OfflineProvider.from_settings()

    assert provider.rate_limit is not None and provider.rate_limit.rpm == 100


def test_the_limiter_backs_off_against_the_emulated_limit(settings: Any) -> None:
    settings.COURSEGEN_CONCURRENCY_INITIAL = 16.0
    settings.COURSEGEN_CONCURRENCY_INCREASE = 0.0
    provider = OfflineProvider(rate_limit=_shared(rpm=20), latency_scale=0.0)
    outcomes: list[str] = []

    def call() -> None:
        try:
            call_limited(provider, _request("emulated"))
            outcomes.append("ok")
        except TransientProviderError:
            outcomes.append("429")

    threads = [threading.Thread(target=call) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("ok") == 20 and outcomes.count("429") == 10
    limit = concurrency.limiter_for("emulated").state()["limit"]  # type: ignore[union-attr]
    assert limit < 16.0  # low remaining headers and 429s halved it
