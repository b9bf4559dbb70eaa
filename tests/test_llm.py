"""The call / validate / re-ask loop and the transport retry policy, with a scripted provider."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tenacity import RetryCallState

from generation.llm import TaskSpec, generate
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    PermanentProviderError,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.retry import BackoffWait
from generation.schemas import CourseRequest, TaskKind, Tier

GOOD_SUMMARY = {"summary": "A" * 60, "key_takeaways": ["one idea", "another idea"]}
BAD_SUMMARY = {"summary": "too short", "key_takeaways": ["only one"]}


class ScriptedProvider(Provider):
    name = "scripted"

    def __init__(self, replies: list[Any]):
        self.replies = list(replies)
        self.requests: list[CompletionRequest] = []

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return Completion(
            data=reply,
            raw_text=str(reply),
            usage=Usage(100, 0, 50),
            latency_s=0.01,
            model=request.model,
            provider=self.name,
        )


def _spec() -> TaskSpec:
    return TaskSpec(
        kind=TaskKind.MODULE_SUMMARY,
        tier=Tier.SIMPLE,
        model="gpt-4.1-nano",
        request=CourseRequest(topic="Rivers"),
        outline=None,
        context={"module_index": 1, "module_title": "Rivers"},
    )


@pytest.fixture(autouse=True)
def _no_waiting(settings: Any) -> None:
    settings.COURSEGEN_TRANSIENT_BASE_WAIT_S = 0
    settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS = 3


def test_it_returns_valid_output_from_the_first_attempt() -> None:
    provider = ScriptedProvider([GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert result.ok and result.data == GOOD_SUMMARY
    assert [(a.kind, a.outcome) for a in result.attempts] == [("first", "ok")]
    assert result.cost_usd > 0


def test_it_reasks_with_only_the_latest_failure_and_its_errors() -> None:
    other_bad = {"summary": "B" * 60, "key_takeaways": []}
    provider = ScriptedProvider([BAD_SUMMARY, other_bad, GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert result.ok
    assert [a.kind for a in result.attempts] == ["first", "reask", "reask"]
    third = provider.requests[2].messages
    assert len(third) == len(provider.requests[0].messages) + 2  # base + one failure, not two
    assert "key_takeaways" in third[-1].content
    assert "summary: String should have at least 50" not in third[-1].content
    assert str(other_bad) == third[-2].content


def test_it_stops_early_when_the_same_errors_repeat() -> None:
    provider = ScriptedProvider([BAD_SUMMARY, BAD_SUMMARY, GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert not result.ok
    assert len(provider.requests) == 2
    assert "same validation errors" in result.error
    assert result.validation_errors


def test_it_reasks_after_output_that_is_not_json() -> None:
    broken = InvalidOutputError("bad json", raw_text='{"summary": ', usage=Usage(90, 0, 5))
    provider = ScriptedProvider([broken, GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert result.ok
    assert [a.outcome for a in result.attempts] == ["invalid", "ok"]
    assert '{"summary": ' in provider.requests[1].messages[-2].content


def test_it_retries_transient_errors_and_records_them() -> None:
    provider = ScriptedProvider([TransientProviderError("503", status_code=503), GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert result.ok
    assert [(a.kind, a.outcome) for a in result.attempts] == [
        ("first", "transient"),
        ("transport_retry", "ok"),
    ]


def test_it_fails_fast_on_permanent_errors() -> None:
    provider = ScriptedProvider(
        [PermanentProviderError("401 bad key", status_code=401), GOOD_SUMMARY]
    )

    result = generate(_spec(), provider)

    assert not result.ok
    assert len(provider.requests) == 1
    assert "401 bad key" in result.error


def _state(attempt: int, exc: Exception) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_it_backs_off_with_full_jitter_within_the_exponential_bound(attempt: int) -> None:
    wait = BackoffWait(base_s=1.0, max_s=30.0)
    waits = [wait(_state(attempt, TransientProviderError("x"))) for _ in range(200)]
    assert all(0 <= w <= min(30.0, 2 ** (attempt - 1)) for w in waits)
    assert len(set(waits)) > 1  # jittered, not fixed


def test_it_never_waits_less_than_retry_after() -> None:
    wait: Callable[[RetryCallState], float] = BackoffWait(base_s=0.01, max_s=0.1)
    exc = TransientProviderError("429", status_code=429, retry_after=7.5)
    assert all(wait(_state(1, exc)) >= 7.5 for _ in range(50))
