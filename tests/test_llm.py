"""The call / validate / re-ask loop and the transport retry policy, with a scripted provider."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tenacity import RetryCallState

from generation.llm import TaskSpec, generate
from generation.prompts import task_context
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    PermanentProviderError,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.providers.offline import build_content
from generation.retry import BackoffWait
from generation.schemas import CourseOutline, CourseRequest, Question, TaskKind, Tier
from generation.tokens import count_message_tokens, count_tokens
from generation.validation import validate_output

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
    # Both fields fail each time, so each repair is a whole re-ask (not a part request).
    other_bad = {"summary": 5, "key_takeaways": []}
    provider = ScriptedProvider([BAD_SUMMARY, other_bad, GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert result.ok
    assert [a.kind for a in result.attempts] == ["first", "reask", "reask"]
    first, third = provider.requests[0].messages, provider.requests[2].messages
    assert third[: len(first)] == first  # the same base prompt, cacheable prefix first
    assert len(third) == len(first) + 2  # base + one failure, not two
    feedback = third[-1].content
    assert "summary: Input should be a valid string" in feedback
    assert "key_takeaways: List should have at least 2 items after validation, not 0" in feedback
    assert "at least 50 characters" not in feedback  # the first failure's errors are gone
    assert "not 1" not in feedback
    assert third[-2] == Message("assistant", json.dumps(other_bad))
    assert all("too short" not in m.content for m in third)  # nor its output
    assert result.attempts[1].errors == [
        {"path": "summary", "message": "Input should be a valid string"},
        {
            "path": "key_takeaways",
            "message": "List should have at least 2 items after validation, not 0",
        },
    ]


def test_it_stops_early_when_the_same_errors_repeat() -> None:
    provider = ScriptedProvider([BAD_SUMMARY, BAD_SUMMARY, GOOD_SUMMARY])

    result = generate(_spec(), provider)

    assert not result.ok
    assert len(provider.requests) == 2
    assert "same validation errors" in result.error
    assert result.validation_errors


class MeteredProvider(ScriptedProvider):
    """Reports the tokens a real provider would: the prompt as sent, the reply as written."""

    def complete(self, request: CompletionRequest) -> Completion:
        completion = super().complete(request)
        usage = Usage(
            count_message_tokens([m.as_dict() for m in request.messages]),
            0,
            count_tokens(completion.raw_text),
        )
        return Completion(completion.data, completion.raw_text, usage, 0.01, request.model, "x")


def test_it_stops_a_task_when_its_token_budget_is_spent(settings: Any) -> None:
    settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS = 10
    settings.COURSEGEN_TASK_TOKEN_BUDGET = 6000
    # Two different failures in turn, so only the budget can stop the loop before 10 attempts.
    other_bad = {"summary": 7, "key_takeaways": []}
    provider = MeteredProvider([BAD_SUMMARY, other_bad] * 5)

    result = generate(_spec(), provider)

    assert not result.ok
    assert "token budget exhausted" in result.error
    assert 1 < len(provider.requests) < 10
    assert sum(a.usage.total_tokens for a in result.attempts) <= 6000
    assert len(result.attempts) == len(provider.requests)  # every call is in the ledger


def test_the_budget_check_tokenizes_a_prompt_only_when_its_bytes_do_not_fit(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import generation.llm as llm

    counted: list[int] = []

    def counting(messages: list[dict[str, str]]) -> int:
        counted.append(len(messages))
        return count_message_tokens(messages)

    monkeypatch.setattr(llm, "count_message_tokens", counting)
    provider = MeteredProvider([GOOD_SUMMARY])
    assert generate(_spec(), provider).ok
    assert counted == []  # a few KB of prompt against 60,000 tokens: the bytes decide

    messages = provider.requests[0].messages
    bound = sum(len(m.content.encode()) + 3 for m in messages) + 3
    settings.COURSEGEN_TASK_TOKEN_BUDGET = bound - 1  # the bytes do not fit, the tokens do
    provider = MeteredProvider([GOOD_SUMMARY])
    assert generate(_spec(), provider).ok
    assert counted == [len(messages)]

    settings.COURSEGEN_TASK_TOKEN_BUDGET = 10  # neither fits: stopped before the call
    provider = MeteredProvider([GOOD_SUMMARY])
    result = generate(_spec(), provider)
    assert not result.ok and "token budget exhausted" in result.error
    assert provider.requests == []


def test_a_bounded_schema_is_built_once_and_follows_the_question_types(settings: Any) -> None:
    from generation.output_bounds import bounded_schema

    request = CourseRequest(topic="Rivers and valleys", num_modules=2)
    first = bounded_schema(Question, request=request)
    assert bounded_schema(Question, request=request) is first  # cached: read-only
    kinds = {v["properties"]["type"]["const"] for v in first["anyOf"]}
    assert kinds == set(settings.COURSEGEN_QUESTION_TYPES)

    settings.COURSEGEN_QUESTION_TYPES = ["true_false"]
    only = bounded_schema(Question, request=request)
    assert [v["properties"]["type"]["const"] for v in only["anyOf"]] == ["true_false"]
    other = bounded_schema(Question, request=request.model_copy(update={"num_modules": 3}))
    assert other == only  # a Question does not depend on the counts


# --- Targeted regeneration -------------------------------------------------------------------
LESSON_REQUEST = CourseRequest(topic="Rivers and valleys", num_modules=1, lessons_per_module=1)


def _lesson_spec(kind: TaskKind) -> TaskSpec:
    outline = CourseOutline.model_validate(
        build_content(TaskKind.OUTLINE, LESSON_REQUEST.model_dump(mode="json"))
    )
    context = task_context(kind, "m1.l1", request=LESSON_REQUEST, outline=outline)
    return TaskSpec(kind, Tier.COMPLEX, "gpt-4.1-mini", LESSON_REQUEST, outline, context)


def _valid_assessment(spec: TaskSpec) -> dict[str, Any]:
    data = build_content(TaskKind.ASSESSMENT, spec.context)
    assert validate_output(TaskKind.ASSESSMENT, data, request=spec.request, context=spec.context).ok
    return data


def _with_wrong_answer(data: dict[str, Any], index: int) -> dict[str, Any]:
    broken = json.loads(json.dumps(data))
    assert broken["questions"][index]["type"] == "multiple_choice"
    broken["questions"][index]["correct_answer"] = "None of these options"
    return broken


def test_it_regenerates_only_the_failing_question_and_merges_it() -> None:
    spec = _lesson_spec(TaskKind.ASSESSMENT)
    good = _valid_assessment(spec)
    provider = ScriptedProvider([_with_wrong_answer(good, 2), good["questions"][2]])

    result = generate(spec, provider)

    assert result.ok and result.data == good
    assert [(a.kind, a.part) for a in result.attempts] == [("first", ""), ("part", "questions.2")]
    first, second = provider.requests
    assert first.schema.__name__ == "Assessment"
    assert second.schema is Question  # a request for that one question only
    assert second.context["part"] == "questions.2"
    assert second.messages[0] == first.messages[0]  # the same cached system prefix
    assert len(second.messages) == 2
    ask = second.messages[-1].content
    assert "`questions.2`" in ask
    assert "questions.2: Value error, multiple_choice correct_answer must be exactly one" in ask
    assert json.dumps(_with_wrong_answer(good, 2)["questions"][2]) in ask
    # The other questions' content is not sent again (their stems are, to avoid repeats).
    assert all(q["explanation"] not in ask for i, q in enumerate(good["questions"]) if i != 2)


def test_it_regenerates_only_the_failing_field() -> None:
    spec = _lesson_spec(TaskKind.LESSON_SECTION)
    good = build_content(TaskKind.LESSON_SECTION, spec.context)
    broken = {**good, "summary": "Too short."}
    provider = ScriptedProvider([broken, {"summary": good["summary"]}])

    result = generate(spec, provider)

    assert result.ok and result.data == good
    part_request = provider.requests[1]
    assert list(part_request.schema.model_fields) == ["summary"]
    assert part_request.schema.model_json_schema()["required"] == ["summary"]
    assert "summary: String should have at least 50 characters" in part_request.messages[-1].content


def test_it_falls_back_to_a_whole_reask_when_a_part_cannot_be_repaired() -> None:
    spec = _lesson_spec(TaskKind.ASSESSMENT)
    good = _valid_assessment(spec)
    still_wrong = _with_wrong_answer(good, 2)["questions"][2]
    provider = ScriptedProvider([_with_wrong_answer(good, 2), still_wrong, still_wrong, good])

    result = generate(spec, provider)

    assert result.ok and result.data == good
    assert [a.kind for a in result.attempts] == ["first", "part", "part", "reask"]
    reask = provider.requests[3]
    assert reask.schema.__name__ == "Assessment"
    assert "questions.2: Value error" in reask.messages[-1].content


def test_it_keeps_parts_an_earlier_attempt_got_right_when_a_reask_breaks_others() -> None:
    spec = _lesson_spec(TaskKind.ASSESSMENT)
    good = _valid_assessment(spec)
    still_wrong = _with_wrong_answer(good, 2)["questions"][2]
    # The re-ask fixes question 2 but breaks question 0, which the first reply had right.
    provider = ScriptedProvider(
        [_with_wrong_answer(good, 2), still_wrong, still_wrong, _with_wrong_answer(good, 0)]
    )

    result = generate(spec, provider)

    assert result.ok and result.data == good
    assert len(provider.requests) == 4  # no part request for question 0: it was kept
    assert [a.kind for a in result.attempts] == ["first", "part", "part", "reask"]
    assert result.attempts[-1].outcome == "invalid"  # the ledger still shows what came back


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
    assert result.error == "provider error: PermanentProviderError (status 401); see the logs"


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


def test_it_keeps_the_ledger_when_something_breaks_mid_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = ScriptedProvider([BAD_SUMMARY, GOOD_SUMMARY])
    calls = {"n": 0}
    real = generate.__globals__["reask_messages"]

    def broken_reask(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        raise RuntimeError("bug while building the re-ask")

    monkeypatch.setitem(generate.__globals__, "reask_messages", broken_reask)

    result = generate(_spec(), provider)

    assert real is not None and calls["n"] == 1
    assert not result.ok and result.error == "internal error: RuntimeError; see the logs"
    assert "bug while" not in result.error  # the exception's text stays in the server log
    assert [a.outcome for a in result.attempts] == ["invalid"]  # the paid call is still recorded


def test_it_defers_when_redis_or_the_database_blinks(monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    class Down(Provider):
        def complete(self, request: CompletionRequest) -> Completion:
            raise redis.ConnectionError("connection reset by peer")

    result = generate(_spec(), Down())

    assert result.defer_s is not None and not result.ok


def test_a_failed_task_names_the_check_and_the_value_it_could_not_meet() -> None:
    request = CourseRequest(topic="Rivers", num_modules=2, lessons_per_module=1)
    one_module = build_content(
        TaskKind.OUTLINE, request.model_copy(update={"num_modules": 1}).model_dump(mode="json")
    )
    spec = TaskSpec(
        kind=TaskKind.OUTLINE,
        tier=Tier.COMPLEX,
        model="gpt-4.1-mini",
        request=request,
        outline=None,
        context=request.model_dump(mode="json"),
    )

    result = generate(spec, ScriptedProvider([one_module] * 3))

    assert not result.ok
    assert "outline_size check failed at modules: has 1 modules; 2 requested" in result.error
    assert result.validation_errors[0]["check"] == "outline_size"
