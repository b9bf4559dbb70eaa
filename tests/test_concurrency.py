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
from generation.models import Priority
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


# --- Priority in line: when the limit binds, permits go by rank, not first come ---------------
def _rank(priority: int, *, submitted_at: float = 1_000_000.0, done: float = 0.0) -> float:
    return concurrency.call_rank(priority=priority, submitted_at=submitted_at, done_share=done)


def test_it_ranks_calls_by_aged_job_priority_and_progress(settings: Any) -> None:
    settings.COURSEGEN_QUEUE_AGING_S = 60.0
    settings.COURSEGEN_PROVIDER_PROGRESS_STEPS = 1.0

    assert _rank(Priority.HIGH) < _rank(Priority.NORMAL) < _rank(Priority.LOW)
    # A LOW job submitted eight aging intervals before an URGENT one ranks with it: no starvation.
    assert _rank(Priority.LOW, submitted_at=0.0) == _rank(Priority.URGENT, submitted_at=480.0)
    # Of two equal jobs, the one further along goes first, by up to one step when done.
    assert _rank(Priority.NORMAL, done=0.9) < _rank(Priority.NORMAL, done=0.1)
    assert _rank(Priority.NORMAL, done=1.0) == _rank(Priority.HIGH + 2)


def test_it_gives_a_freed_permit_to_the_best_ranked_waiter_not_the_first_to_ask() -> None:
    here, there = _limiter(initial=1.0), _limiter(initial=1.0)  # two worker processes
    holder = here.try_acquire()
    assert holder is not None
    # A low-priority call starts waiting first, then a high-priority one on another worker.
    assert here.try_acquire(rank=_rank(Priority.LOW), token="low") is None
    assert there.try_acquire(rank=_rank(Priority.HIGH), token="high") is None
    assert here.state()["waiting"] == 2

    here.release(holder, signal="neutral")

    assert here.try_acquire(rank=_rank(Priority.LOW), token="low") is None  # asks first, waits
    high = there.try_acquire(rank=_rank(Priority.HIGH), token="high")
    assert high is not None
    there.release(high, signal="neutral")
    assert here.try_acquire(rank=_rank(Priority.LOW), token="low") is not None  # its turn
    assert here.state()["waiting"] == 0


def test_it_grants_as_many_waiters_as_there_are_free_slots_in_rank_order() -> None:
    limiter = _limiter(initial=2.0)
    holders = [limiter.try_acquire(), limiter.try_acquire()]
    for name, priority in (("a", Priority.LOW), ("b", Priority.NORMAL), ("c", Priority.HIGH)):
        assert limiter.try_acquire(rank=_rank(priority), token=name) is None
    for permit in holders:
        limiter.release(permit, signal="neutral")  # type: ignore[arg-type]

    granted = {
        name: limiter.try_acquire(rank=_rank(priority), token=name) is not None
        for name, priority in (("a", Priority.LOW), ("b", Priority.NORMAL), ("c", Priority.HIGH))
    }

    assert granted == {"a": False, "b": True, "c": True}


def test_a_waiter_that_stops_asking_leaves_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = _limiter(initial=1.0)
    holder = limiter.try_acquire()
    monkeypatch.setattr(concurrency, "WAITER_TTL_S", 0.2)
    limiter.try_acquire(rank=_rank(Priority.URGENT), token="dead")  # then its worker is killed
    monkeypatch.setattr(concurrency, "WAITER_TTL_S", 5)
    limiter.release(holder, signal="neutral")  # type: ignore[arg-type]
    assert limiter.try_acquire(rank=_rank(Priority.LOW), token="alive") is None

    time.sleep(0.3)

    assert limiter.try_acquire(rank=_rank(Priority.LOW), token="alive") is not None


def test_a_call_that_gives_up_waiting_leaves_the_line() -> None:
    limiter = _limiter(initial=1.0)
    limiter.try_acquire()

    with pytest.raises(ProviderBusyError):
        limiter.acquire(timeout=0.05, rank=_rank(Priority.URGENT))

    assert limiter.state()["waiting"] == 0


def test_calls_waiting_for_the_provider_go_out_in_rank_order(limiter_settings: Any) -> None:
    limiter_settings.COURSEGEN_CONCURRENCY_INITIAL = 1.0
    limiter_settings.COURSEGEN_CONCURRENCY_INCREASE = 0.0
    limiter_settings.COURSEGEN_CONCURRENCY_WAIT_S = 30.0
    limiter = concurrency.limiter_for("m")
    assert limiter is not None
    holder = limiter.try_acquire()
    order: list[str] = []

    class Recording(ScriptedProvider):
        def complete(self, request: CompletionRequest) -> Completion:
            order.append(str(request.context["name"]))
            return super().complete(request)

    provider = Recording()
    ranks = {"low": Priority.LOW, "normal": Priority.NORMAL, "urgent": Priority.URGENT}
    ranks |= {"high": Priority.HIGH, "old-low": Priority.LOW}
    threads = [
        threading.Thread(
            target=call_limited,
            args=(provider, dataclasses.replace(_request(), context={"name": name})),
            kwargs={"rank": _rank(p, submitted_at=0.0 if name == "old-low" else 1e6)},
        )
        for name, p in ranks.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while limiter.state()["waiting"] < len(threads) and time.monotonic() < deadline:
        time.sleep(0.01)  # every call stands in line before the slot frees

    limiter.release(holder, signal="neutral")  # type: ignore[arg-type]
    for thread in threads:
        thread.join()

    assert order == ["old-low", "urgent", "high", "normal", "low"]


@pytest.mark.django_db(transaction=True)
def test_a_tasks_calls_carry_its_jobs_rank(teacher: Any, base_class: Any) -> None:
    from generation import services
    from generation.models import CourseGenerationJob
    from generation.schemas import CourseRequest

    request = CourseRequest(topic="Ranks", num_modules=1, lessons_per_module=1)
    job = services.job_submit(user=teacher, base_class=base_class, request=request)
    job = CourseGenerationJob.objects.get(pk=job.pk)
    task = job.tasks.get(kind="outline")

    spec = services.task_spec_build(task=task, worker="w")

    expected = _rank(job.priority, submitted_at=job.created_at.timestamp(), done=job.progress / 100)
    assert spec.rank == expected


def test_a_model_keeps_one_limiter_until_its_settings_change(settings: Any) -> None:
    settings.COURSEGEN_CONCURRENCY_ENABLED = True
    first, again = concurrency.limiter_for("kept-model"), concurrency.limiter_for("kept-model")
    other = concurrency.limiter_for("other-model")
    settings.COURSEGEN_CONCURRENCY_MAX = settings.COURSEGEN_CONCURRENCY_MAX + 1
    changed = concurrency.limiter_for("kept-model")

    assert first is not None and first is again  # its scripts registered once, not per call
    assert other is not None and other.model == "other-model" and other is not first
    assert changed is not None and changed is not first
    assert changed.config.maximum == settings.COURSEGEN_CONCURRENCY_MAX
