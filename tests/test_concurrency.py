"""The per-model AIMD limit on provider calls in flight, shared through Redis."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from django.conf import settings

from coursegen.cache import redis_client
from generation import concurrency
from generation.concurrency import (
    ConcurrencyLimiter,
    LimiterConfig,
    ProviderBusyError,
    call_limited,
    runs_low,
)
from generation.providers.base import (
    Completion,
    CompletionRequest,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.schemas import LessonSectionContent, TaskKind, Tier

CONFIG = LimiterConfig(
    initial=2.0,
    minimum=1.0,
    maximum=6.0,
    increase=1.0,
    decrease=0.5,
    low_remaining=0.1,
    lease_s=30.0,
    wait_s=0.2,
)


def _limiter(model: str = "m", **changes: Any) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(
        model, redis_client(settings.REDIS_URL), dataclasses.replace(CONFIG, **changes)
    )


def _request(model: str = "m") -> CompletionRequest:
    return CompletionRequest(
        messages=(),
        schema=LessonSectionContent,
        model=model,
        tier=Tier.COMPLEX,
        task_kind=TaskKind.LESSON_SECTION,
    )


class ScriptedProvider(Provider):
    """Answers with the given headers, or a 429; counts calls in flight."""

    def __init__(self, headers: dict[str, str] | None = None, status: int | None = None):
        self.headers, self.status = headers or {}, status
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> Completion:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(0.05)
        with self.lock:
            self.in_flight -= 1
        if self.status is not None:
            raise TransientProviderError("429", status_code=self.status, retry_after=0.01)
        return Completion({}, "{}", Usage(), 0.05, request.model, "scripted", self.headers)


@pytest.fixture
def limiter_settings(settings: Any) -> Any:
    settings.COURSEGEN_CONCURRENCY_INITIAL = CONFIG.initial
    settings.COURSEGEN_CONCURRENCY_MAX = CONFIG.maximum
    settings.COURSEGEN_CONCURRENCY_INCREASE = CONFIG.increase
    settings.COURSEGEN_CONCURRENCY_DECREASE = CONFIG.decrease
    settings.COURSEGEN_CONCURRENCY_LOW_REMAINING = CONFIG.low_remaining
    settings.COURSEGEN_CONCURRENCY_WAIT_S = CONFIG.wait_s
    return settings


def test_it_holds_calls_in_flight_to_the_limit_per_model() -> None:
    limiter, other = _limiter("m"), _limiter("other-model")
    first, second = limiter.try_acquire(), limiter.try_acquire()

    assert first and second
    assert limiter.try_acquire() is None  # a third call waits
    assert other.try_acquire() is not None  # another model has its own limit
    limiter.release(first, signal="neutral")
    assert limiter.try_acquire() is not None


def test_it_shares_the_limit_between_processes_through_redis() -> None:
    here, there = _limiter(), _limiter()  # two workers: same Redis keys

    assert here.try_acquire() and there.try_acquire()
    assert here.try_acquire() is None and there.try_acquire() is None


def test_it_grows_the_limit_additively_on_success_up_to_the_max() -> None:
    limiter = _limiter()

    limits = [limiter.release(limiter.try_acquire(), signal="ok") for _ in range(6)]  # type: ignore[arg-type]

    assert limits == [3.0, 4.0, 5.0, 6.0, 6.0, 6.0]


def test_it_halves_the_limit_once_for_calls_that_were_in_flight_together() -> None:
    limiter = _limiter(initial=6.0)
    permits = [limiter.try_acquire() for _ in range(3)]

    limits = [limiter.release(p, signal="throttle") for p in permits]  # type: ignore[arg-type]

    assert limits == [3.0, 3.0, 3.0]  # one decrease for one push-back
    later = limiter.try_acquire()
    assert later is not None
    assert limiter.release(later, signal="throttle") == 1.5  # a new call's 429 counts again
    assert limiter.release(limiter.try_acquire(), signal="throttle") == 1.0  # type: ignore[arg-type]


def test_it_frees_a_dead_workers_permits_when_their_lease_ends() -> None:
    limiter = _limiter(lease_s=0.3)
    assert limiter.try_acquire() and limiter.try_acquire()  # then the worker is killed
    assert limiter.try_acquire() is None

    time.sleep(0.4)

    assert limiter.try_acquire() is not None


def test_it_defers_the_task_when_no_permit_frees_in_time() -> None:
    limiter = _limiter(initial=1.0, wait_s=0.1)
    limiter.try_acquire()

    with pytest.raises(ProviderBusyError) as raised:
        limiter.acquire(timeout=0.1)

    assert raised.value.retry_after >= 1.0 and "no call slot for m" in str(raised.value)


def test_it_never_lets_more_calls_out_than_the_limit(limiter_settings: Any) -> None:
    provider = ScriptedProvider()
    limiter_settings.COURSEGEN_CONCURRENCY_WAIT_S = 5.0
    limiter_settings.COURSEGEN_CONCURRENCY_INCREASE = 0.0
    threads = [threading.Thread(target=call_limited, args=(provider, _request())) for _ in range(8)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert provider.peak == 2


def test_it_backs_off_on_429_and_when_remaining_headers_run_low(limiter_settings: Any) -> None:
    limiter_settings.COURSEGEN_CONCURRENCY_INITIAL = 6.0
    with pytest.raises(TransientProviderError):
        call_limited(ScriptedProvider(status=429), _request("a"))
    low = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "3"}
    call_limited(ScriptedProvider(headers=low), _request("b"))
    plenty = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "90"}
    call_limited(ScriptedProvider(headers=plenty), _request("c"))

    assert [_limit(m) for m in "abc"] == [3.0, 3.0, 6.0]  # halved, halved, grew to the max


def _limit(model: str) -> float:
    limiter = concurrency.limiter_for(model)
    assert limiter is not None
    return limiter.state()["limit"]


def test_it_reads_low_remaining_tokens_too() -> None:
    headers = {"x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "500"}

    assert runs_low(headers, 0.1) and not runs_low(headers, 0.01)
    assert not runs_low({}, 0.1)


def test_it_fails_open_when_redis_is_unreachable(limiter_settings: Any) -> None:
    limiter_settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    provider = ScriptedProvider()

    completion = call_limited(provider, _request())

    assert completion.provider == "scripted"
