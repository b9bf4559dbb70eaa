"""Client-side pacing to the provider's advertised limits, in rank order (generation/pacer.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings

from coursegen.cache import redis_client
from generation import pacer
from generation.concurrency import ProviderBusyError, call_limited, limiter_for
from generation.pacer import Pacer, PacerConfig, call_paced
from generation.providers.base import (
    Completion,
    CompletionRequest,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.providers.ratelimit import ProviderRateLimit, bucket_key
from generation.schemas import LessonSectionContent, TaskKind, Tier

CONFIG = PacerConfig(share=1.0, burst_s=0.0, wait_s=5.0)
REQUEST = CompletionRequest(
    messages=(),
    schema=LessonSectionContent,
    model="m",
    tier=Tier.COMPLEX,
    task_kind=TaskKind.LESSON_SECTION,
)


@pytest.fixture(autouse=True)
def nothing_known() -> Iterator[None]:
    pacer._known.clear()  # what this process learned about the limits, per model
    yield
    pacer._known.clear()


def _pacer(model: str = "m", **changes: Any) -> Pacer:
    config = PacerConfig(**{**CONFIG.__dict__, **changes})
    return Pacer(model, redis_client(settings.REDIS_URL), config)


def _limits(rpm: int = 0, tpm: int = 0) -> dict[str, str]:
    headers = {}
    if rpm:
        headers["x-ratelimit-limit-requests"] = str(rpm)
    if tpm:
        headers["x-ratelimit-limit-tokens"] = str(tpm)
    return headers


def _send(provider: Provider) -> Callable[[bool], Completion]:
    """The call as generation/llm.py makes it: under the concurrency limit, paced or not."""
    return lambda paced: call_limited(provider, REQUEST, rank=0.0, paced=paced)


def _fill(p: Pacer, requests: float, *, ago: float = 0.0) -> None:
    """The request bucket held `requests` `ago` seconds ago (and refills since)."""
    client = redis_client(settings.REDIS_URL)
    seconds, micros = client.time()
    stamp = seconds + micros / 1e6 - ago
    client.hset(f"coursegen:pace:{p.model}", mapping={"r": requests, "ts": stamp})


def test_it_does_not_pace_a_model_whose_limits_are_unknown() -> None:
    p = _pacer()

    assert all(p.try_take(token=f"t{i}", rank=0.0)[0] for i in range(50))


def test_it_spends_the_advertised_requests_per_minute_and_says_when_to_ask_again() -> None:
    p = _pacer(burst_s=10.0)  # holds at most ten seconds of the limit
    p.observe(headers=_limits(rpm=60))  # one a second
    _fill(p, 5, ago=8.0)  # the refill would give 13, more than it may hold

    granted = [p.try_take(token=f"t{i}", rank=float(i))[0] for i in range(12)]

    assert granted.count(True) == 10
    turn = p.try_take(token="t11", rank=11.0)
    assert (
        not turn.granted and 0 < turn.wait <= 2.0
    )  # two waiters: its turn comes after two refills


def test_it_grants_in_rank_order_whoever_asks_first() -> None:
    p, other_process = _pacer(), _pacer()  # one line in Redis, shared
    p.observe(headers=_limits(rpm=1))  # a request a minute: nothing refills during the test
    assert not p.try_take(token="low", rank=100.0)[0]  # a LOW call stands in line first
    assert not other_process.try_take(token="high", rank=1.0)[0]

    _fill(p, 1)

    turn = p.try_take(token="low", rank=100.0)
    assert not turn.granted and turn.ahead == 1  # the one request is the better-ranked call's
    assert other_process.try_take(token="high", rank=1.0)[0]
    _fill(p, 1)
    assert p.try_take(token="low", rank=100.0)[0]


def test_it_gives_a_place_up_when_the_waiter_stops_asking() -> None:
    p = _pacer(wait_s=0.0)
    p.observe(headers=_limits(rpm=1))
    assert not p.try_take(token="gone", rank=1.0)[0]
    with pytest.raises(ProviderBusyError):
        p.take(rank=1.0)  # gives up at once and leaves the line

    _fill(p, 1)

    assert p.try_take(token="late", rank=5.0)[2] == 1  # "gone" still asked recently
    redis_client(settings.REDIS_URL).zadd(
        "coursegen:pace:m:waiters-ttl", {"gone": 0}
    )  # its place expired
    assert p.try_take(token="late", rank=5.0)[0]


def test_a_429_holds_every_waiter_back_for_the_retry_after() -> None:
    p = _pacer(burst_s=1.0)
    p.observe(headers=_limits(rpm=6000))
    _fill(p, 100)

    p.observe(headers={}, retry_after=30.0)

    turn = p.try_take(token="t", rank=0.0)
    assert not turn.granted and 29 < turn.wait <= 31


def test_it_charges_the_tokens_a_reply_used() -> None:
    p = _pacer()
    p.observe(headers=_limits(rpm=6000, tpm=600))  # 10 tokens a second
    _fill(p, 1)

    p.observe(headers=_limits(rpm=6000, tpm=600), tokens=1000)

    turn = p.try_take(token="t", rank=0.0)
    assert not turn.granted and turn.wait > 90  # 1,000 tokens owed at 10 a second


def test_it_spends_what_the_provider_holds_above_its_reserve_at_once() -> None:
    p = _pacer(share=0.9)  # the provider keeps a reserve of a tenth of its limit: 6 requests
    p.observe(headers=_limits(rpm=60))  # one a second; it holds at most one when idle
    _fill(p, 1)
    sent = p.try_take(token="sent", rank=0.0)
    later = [p.try_take(token=f"t{i}", rank=0.0).granted for i in range(3)]
    assert sent.granted and not any(later)

    # The provider answers the first call: it had 40 requests left when it took it.
    p.observe(headers={**_limits(rpm=60), "x-ratelimit-remaining-requests": "40"}, turn=sent)

    granted = [p.try_take(token=f"t{i}", rank=0.0).granted for i in range(40)]
    assert granted.count(True) == 40 - 6  # nothing was granted after it; its reserve stays


class BucketProvider(Provider):
    """A provider behind the offline simulator's request bucket (shared through Redis)."""

    def __init__(self, rpm: int):
        self.limit = ProviderRateLimit(rpm=rpm, tpm=0, client=redis_client(settings.REDIS_URL))
        self.refused = 0
        self.lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> Completion:
        admission = self.limit.take("m", 0)
        if not admission.admitted:
            with self.lock:
                self.refused += 1
            raise TransientProviderError(
                "429", status_code=429, retry_after=admission.retry_after_s
            )
        return Completion({}, "{}", Usage(), 0.0, "m", "bucket", admission.headers)


def test_paced_calls_from_many_threads_get_no_429(settings: Any) -> None:
    settings.COURSEGEN_PACER_SHARE, settings.COURSEGEN_PACER_BURST_S = 0.97, 0.0
    provider = BucketProvider(rpm=3000)  # 50 a second
    call_paced("m", _send(provider), rank=0.0)  # the first answer tells the limit
    client = redis_client(settings.REDIS_URL)
    seconds, micros = client.time()
    empty: dict[Any, float] = {"r": 0, "t": 0, "ts": seconds + micros / 1e6}
    client.hset(bucket_key("m"), mapping=empty)  # both buckets empty at once
    client.hset("coursegen:pace:m", mapping={"r": 0, "k": 0, "ts": empty["ts"]})

    def calls() -> None:
        for _ in range(5):
            call_paced("m", _send(provider), rank=0.0)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert provider.refused == 0  # unpaced, the 40 calls would find the bucket empty at once


class LowRemainingProvider(Provider):
    """Answers at once, saying its request bucket is nearly empty."""

    def complete(self, request: CompletionRequest) -> Completion:
        headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0"}
        return Completion({}, "{}", Usage(), 0.0, request.model, "low", headers)


def test_a_paced_model_keeps_its_concurrency_limit_when_the_provider_runs_low(
    settings: Any,
) -> None:
    settings.COURSEGEN_CONCURRENCY_INITIAL = 4.0
    provider, limiter = LowRemainingProvider(), limiter_for("m")
    assert limiter is not None
    call_paced("m", _send(provider), rank=0.0)  # not paced yet: AIMD halves the limit
    assert limiter.state()["limit"] == 2.0

    _fill(_pacer(), 1)
    call_paced("m", _send(provider), rank=0.0)  # paced: the pacer, not AIMD, answers the provider

    assert limiter.state()["limit"] == 3.0


class ScriptedLimits(Provider):
    """Answers at once with the headers it is given, or raises what it is given."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.error: Exception | None = None

    def complete(self, request: CompletionRequest) -> Completion:
        if self.error is not None:
            raise self.error
        return Completion({}, "{}", Usage(), 0.0, request.model, "scripted", dict(self.headers))


def test_an_unpaced_model_is_not_asked_about_again_until_a_reply_names_its_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    takes: list[str] = []
    real_take = Pacer.take

    def counted_take(self: Pacer, **kwargs: Any) -> Any:
        takes.append(self.model)
        return real_take(self, **kwargs)

    monkeypatch.setattr(Pacer, "take", counted_take)
    provider = ScriptedLimits()
    for _ in range(5):
        call_paced("m", _send(provider), rank=0.0)
    assert takes == ["m"]  # the first call learns the pacer knows no limits for "m"

    pacer._unpaced_until["m"] = 0.0  # UNPACED_RECHECK_S later: asked again
    call_paced("m", _send(provider), rank=0.0)
    assert takes == ["m", "m"]

    provider.headers = _limits(rpm=6000)  # the provider starts advertising a limit
    call_paced("m", _send(provider), rank=0.0)  # answered unpaced; its headers are learned
    assert "m" not in pacer._unpaced_until
    call_paced("m", _send(provider), rank=0.0)
    assert takes == ["m", "m", "m"]  # paced from now on
    assert redis_client(settings.REDIS_URL).hget("coursegen:pace:m", "rpm") == b"6000"


def test_a_429_for_an_unpaced_model_still_reaches_the_pacer(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    provider = ScriptedLimits()
    call_paced("m", _send(provider), rank=0.0)
    assert "m" in pacer._unpaced_until
    observed: list[float] = []
    monkeypatch.setattr(
        Pacer, "observe", lambda self, **kwargs: observed.append(kwargs["retry_after"])
    )
    provider.error = TransientProviderError("429", status_code=429, retry_after=7.0)

    with pytest.raises(TransientProviderError):
        call_paced("m", _send(provider), rank=0.0)

    assert observed == [7.0] and "m" not in pacer._unpaced_until
