"""The offline provider: a simulator with schema-valid, sized, deterministic content, modelled
latency, prompt caching, injected faults and a call log. No database, no network."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from generation import checks, parts
from generation.providers import offline
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    TransientProviderError,
)
from generation.providers.offline import FaultRates, OfflineProvider, TierLatency
from generation.schemas import (
    OUTPUT_SCHEMAS,
    TASK_TIERS,
    Assessment,
    CourseMetadata,
    CourseOutline,
    CourseRequest,
    MindMap,
    TaskKind,
    Tier,
)
from generation.tokens import count_message_tokens, count_tokens
from generation.validation import validate_output

LONG_SYSTEM = "You are a careful curriculum designer who writes accurate course material. " * 120


# --- helpers --------------------------------------------------------------------------------------
def _request(
    kind: TaskKind,
    context: Mapping[str, Any],
    *,
    system: str = "You write course content as JSON.",
    max_output_tokens: int | None = None,
) -> CompletionRequest:
    tier = TASK_TIERS[kind]
    return CompletionRequest(
        messages=(Message("system", system), Message("user", f"Write the {kind.value} now.")),
        schema=OUTPUT_SCHEMAS[kind],
        model="gpt-4.1-mini" if tier is Tier.COMPLEX else "gpt-4.1-nano",
        tier=tier,
        task_kind=kind,
        context=context,
        max_output_tokens=max_output_tokens,
    )


def _course(topic: str, modules: int, lessons: int, questions: int = 4, **extra: Any) -> dict:
    return {
        "topic": topic,
        "audience": "adult learners",
        "level": "beginner",
        "language": "en",
        "num_modules": modules,
        "lessons_per_module": lessons,
        "questions_per_lesson": questions,
        **extra,
    }


def _outline(provider: OfflineProvider, course: dict) -> dict:
    return provider.complete(_request(TaskKind.OUTLINE, course)).data


def _task_contexts(course: dict, outline: dict) -> Iterator[tuple[TaskKind, dict]]:
    """Every task after the outline, with the context the pipeline would give it."""
    sketch = [
        {"title": m["title"], "lessons": [lesson["title"] for lesson in m["lessons"]]}
        for m in outline["modules"]
    ]
    base = {**course, "course_title": outline["title"], "outline": sketch}
    for mi, module in enumerate(outline["modules"], start=1):
        in_module = {**base, "module_index": mi, "module_title": module["title"]}
        for li, lesson in enumerate(module["lessons"], start=1):
            in_lesson = {
                **in_module,
                "lesson_index": li,
                "lesson_title": lesson["title"],
                "lesson_summary": lesson["summary"],
                "learning_objectives": lesson["learning_objectives"],
            }
            for kind in (TaskKind.LESSON_SECTION, TaskKind.ASSESSMENT, TaskKind.BRAIN_BYTES):
                yield kind, in_lesson
        yield TaskKind.MODULE_SUMMARY, in_module
    yield TaskKind.MIND_MAP, base
    yield TaskKind.METADATA, base


def _lesson_context(topic: str = "machine learning", **extra: Any) -> dict:
    provider = OfflineProvider()
    course = _course(topic, 4, 3)
    contexts = _task_contexts(course, _outline(provider, course))
    context = next(ctx for kind, ctx in contexts if kind is TaskKind.LESSON_SECTION)
    return {**context, **extra}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# --- content --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("topic", "level", "size"),
    [
        ("Photosynthesis", "beginner", (1, 1, 1)),
        ("machine learning", "intermediate", (4, 3, 4)),
        ("SQL for data analysis", "advanced", (6, 5, 7)),
    ],
)
def test_it_returns_schema_valid_content_for_every_kind(
    topic: str, level: str, size: tuple[int, int, int]
) -> None:
    provider = OfflineProvider()
    course = _course(topic, *size, level=level)

    outline = CourseOutline.model_validate(_outline(provider, course))
    assert len(outline.modules) == size[0]
    assert all(len(m.lessons) == size[1] for m in outline.modules)
    assert all(
        2 <= len(lesson.learning_objectives) <= 4 for m in outline.modules for lesson in m.lessons
    )
    seen: set[TaskKind] = set()
    for kind, context in _task_contexts(course, outline.model_dump()):
        completion = provider.complete(_request(kind, context))
        OUTPUT_SCHEMAS[kind].model_validate(completion.data)
        assert json.loads(completion.raw_text) == completion.data
        assert (completion.provider, completion.model) == ("offline", _request(kind, {}).model)
        seen.add(kind)
    assert seen == set(TaskKind) - {TaskKind.OUTLINE}


def test_it_falls_back_to_its_own_outline_when_the_context_is_empty() -> None:
    provider = OfflineProvider()
    for kind in TaskKind:
        OUTPUT_SCHEMAS[kind].model_validate(provider.complete(_request(kind, {})).data)


@pytest.mark.parametrize("questions", [1, 2, 4, 9, 15])
def test_it_writes_assessments_a_teacher_would_accept(questions: int) -> None:
    context = _lesson_context(questions_per_lesson=questions)

    data = OfflineProvider().complete(_request(TaskKind.ASSESSMENT, context)).data

    assessment = Assessment.model_validate(data)
    assert len(assessment.questions) == questions
    stems = [_norm(q.stem) for q in assessment.questions]
    assert len(set(stems)) == len(stems)
    types = {q.type.value for q in assessment.questions}
    if questions >= 3:
        assert types == {"multiple_choice", "true_false", "short_answer"}
    for question in data["questions"]:
        assert question["objective"] in context["learning_objectives"]
        _check_question(question)


def _check_question(question: dict) -> None:
    options = question["options"]
    if question["type"] == "multiple_choice":
        assert [_norm(o) for o in options].count(_norm(question["correct_answer"])) == 1
        assert len({_norm(o) for o in options}) == len(options)
        assert not any("of the above" in o.lower() for o in options)
        lengths = [len(o) for o in options]
        assert max(lengths) <= 1.5 * min(lengths)
    elif question["type"] == "true_false":
        assert options == ["True", "False"]
    else:
        assert options == []


def test_it_keeps_mind_maps_shallow_and_metadata_at_the_requested_level() -> None:
    provider = OfflineProvider()
    for level in ("beginner", "intermediate", "advanced"):
        for size in ((1, 1), (2, 2), (4, 3), (12, 10)):
            course = _course("Roman history", *size, level=level)
            contexts = dict(_task_contexts(course, _outline(provider, course)))

            mind_map = MindMap.model_validate(
                provider.complete(_request(TaskKind.MIND_MAP, contexts[TaskKind.MIND_MAP])).data
            )
            metadata = CourseMetadata.model_validate(
                provider.complete(_request(TaskKind.METADATA, contexts[TaskKind.METADATA])).data
            )

            assert mind_map.central_topic == "Roman history"
            assert max(node.depth() for node in mind_map.nodes) <= 3
            assert metadata.level.value == level


def test_it_is_deterministic_for_the_same_context() -> None:
    context = _lesson_context()
    first, second = OfflineProvider(seed=3), OfflineProvider(seed=3)

    for kind in TaskKind:
        assert (
            first.complete(_request(kind, context)).raw_text
            == second.complete(_request(kind, context)).raw_text
        )
    other_seed = OfflineProvider(seed=4).complete(_request(TaskKind.LESSON_SECTION, context))
    other_lesson = first.complete(_request(TaskKind.LESSON_SECTION, {**context, "lesson_index": 2}))
    same = first.complete(_request(TaskKind.LESSON_SECTION, context))
    assert other_seed.raw_text != same.raw_text
    assert other_lesson.raw_text != same.raw_text


@pytest.mark.parametrize("topic", ["photosynthesis", "Kubernetes networking", "Baroque music"])
def test_it_writes_about_the_requested_topic(topic: str) -> None:
    context = _lesson_context(topic)
    provider = OfflineProvider()

    for kind in TaskKind:
        text = provider.complete(_request(kind, context)).raw_text.lower()
        assert all(word in text for word in topic.lower().split()), kind
    elsewhere = provider.complete(_request(TaskKind.LESSON_SECTION, _lesson_context("geology")))
    assert topic.lower() not in elsewhere.raw_text.lower()


# Approximate output tokens of real courses, per kind (4 modules x 3 lessons x 4 questions).
TYPICAL_TOKENS = {
    TaskKind.OUTLINE: 800,
    TaskKind.LESSON_SECTION: 900,
    TaskKind.ASSESSMENT: 700,
    TaskKind.BRAIN_BYTES: 400,
    TaskKind.MODULE_SUMMARY: 200,
    TaskKind.MIND_MAP: 300,
    TaskKind.METADATA: 150,
}


@pytest.mark.parametrize("topic", ["machine learning", "photosynthesis"])
def test_it_sizes_a_standard_course_like_real_output(topic: str) -> None:
    provider = OfflineProvider()
    course = _course(topic, 4, 3, 4)
    outline = provider.complete(_request(TaskKind.OUTLINE, course))
    sizes: dict[TaskKind, list[int]] = {TaskKind.OUTLINE: [outline.usage.output_tokens]}
    for kind, context in _task_contexts(course, outline.data):
        sizes.setdefault(kind, []).append(
            provider.complete(_request(kind, context)).usage.output_tokens
        )

    for kind, typical in TYPICAL_TOKENS.items():
        assert 0.7 * typical <= statistics.median(sizes[kind]) <= 1.3 * typical, (kind, sizes[kind])
        assert 0.6 * typical <= min(sizes[kind]) and max(sizes[kind]) <= 1.4 * typical, kind


def test_it_counts_usage_from_the_prompt_and_the_output() -> None:
    request = _request(TaskKind.LESSON_SECTION, _lesson_context())

    completion = OfflineProvider().complete(request)

    assert completion.usage.input_tokens == count_message_tokens(
        [m.as_dict() for m in request.messages]
    )
    assert completion.usage.output_tokens == count_tokens(completion.raw_text)
    assert completion.usage.cached_tokens == 0


def test_it_serves_a_repeated_long_system_prompt_from_cache() -> None:
    provider = OfflineProvider()
    context = _lesson_context()
    system_tokens = count_tokens(LONG_SYSTEM)
    assert system_tokens >= 1024

    first = provider.complete(_request(TaskKind.LESSON_SECTION, context, system=LONG_SYSTEM))
    second = provider.complete(_request(TaskKind.ASSESSMENT, context, system=LONG_SYSTEM))
    other = provider.complete(_request(TaskKind.ASSESSMENT, context, system=LONG_SYSTEM + "Hi."))
    short = [provider.complete(_request(TaskKind.ASSESSMENT, context)) for _ in range(2)]

    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == system_tokens // 128 * 128
    assert second.usage.cached_tokens <= second.usage.input_tokens
    assert other.usage.cached_tokens == 0
    assert [c.usage.cached_tokens for c in short] == [0, 0]


# --- latency --------------------------------------------------------------------------------------
def test_it_returns_instantly_at_latency_scale_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s at latency scale 0")

    monkeypatch.setattr(offline.latency.time, "sleep", no_sleep)

    completion = OfflineProvider(latency_scale=0).complete(
        _request(TaskKind.LESSON_SECTION, _lesson_context())
    )

    assert completion.latency_s < 0.5


@pytest.mark.parametrize(
    ("kind", "ttft", "rate"), [(TaskKind.LESSON_SECTION, 0.5, 80), (TaskKind.METADATA, 0.3, 150)]
)
def test_it_sleeps_as_modelled_when_scaled(kind: TaskKind, ttft: float, rate: float) -> None:
    scale = 0.01
    completion = OfflineProvider(latency_scale=scale).complete(_request(kind, _lesson_context()))

    modelled = (ttft + completion.usage.output_tokens / rate) * scale
    assert modelled * 0.95 <= completion.latency_s <= modelled + 1.0


def test_it_takes_latency_parameters_per_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(offline.latency.time, "sleep", slept.append)
    provider = OfflineProvider(
        latency_scale=0.5,
        latency={Tier.SIMPLE: TierLatency(time_to_first_token_s=2.0, output_tokens_per_s=100.0)},
    )

    completion = provider.complete(_request(TaskKind.METADATA, _lesson_context()))
    provider.complete(_request(TaskKind.BRAIN_BYTES, _lesson_context()))

    assert slept[0] == pytest.approx((2.0 + completion.usage.output_tokens / 100.0) * 0.5)
    assert provider.latency[Tier.COMPLEX] == offline.DEFAULT_LATENCY[Tier.COMPLEX]
    assert len(slept) == 2


# --- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "status"), [("rate_limit", 429), ("server_error", 503), ("timeout", None)]
)
def test_it_raises_transient_errors_for_injected_transport_faults(
    fault: str, status: int | None
) -> None:
    provider = OfflineProvider(faults=f"{fault}=1.0")

    with pytest.raises(TransientProviderError) as caught:
        provider.complete(_request(TaskKind.LESSON_SECTION, _lesson_context()))

    assert caught.value.status_code == status
    if fault == "rate_limit":
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 1.0
    if fault == "timeout":
        assert "timeout" in str(caught.value)


@pytest.mark.parametrize("kind", list(TaskKind))
def test_it_returns_truncated_json_for_the_malformed_fault(kind: TaskKind) -> None:
    with pytest.raises(InvalidOutputError) as caught:
        OfflineProvider(faults="malformed=1").complete(_request(kind, _lesson_context()))

    with pytest.raises(json.JSONDecodeError):
        json.loads(caught.value.raw_text)
    assert caught.value.usage.output_tokens == count_tokens(caught.value.raw_text) > 0
    assert caught.value.usage.input_tokens > 0


@pytest.mark.parametrize("kind", list(TaskKind))
def test_it_returns_schema_invalid_json_for_the_invalid_fault(kind: TaskKind) -> None:
    completion = OfflineProvider(faults="invalid=1").complete(_request(kind, _lesson_context()))

    assert isinstance(completion, Completion)
    assert json.loads(completion.raw_text) == completion.data
    with pytest.raises(ValidationError):
        OUTPUT_SCHEMAS[kind].model_validate(completion.data)


@pytest.mark.parametrize("kind", list(TaskKind))
@pytest.mark.parametrize("pick", [n / 17 for n in range(17)])
def test_it_corrupts_exactly_one_part_for_the_invalid_fault(kind: TaskKind, pick: float) -> None:
    schema = OUTPUT_SCHEMAS[kind]
    valid = offline.build_content(kind, _lesson_context())

    broken = offline.make_invalid(kind, valid, pick=pick)

    with pytest.raises(ValidationError) as caught:
        schema.model_validate(broken)
    paths = {".".join(map(str, e["loc"])) for e in caught.value.errors()}
    failing = {parts.part_of(schema, p) for p in paths}
    assert len(failing) == 1 and None not in failing  # one part, repairable on its own
    (part,) = failing
    assert part is not None
    assert parts.merge(broken, part, parts.extract(valid, part)) == valid  # nothing else changed


@pytest.mark.parametrize(
    ("kind", "part"),
    [
        (TaskKind.ASSESSMENT, "questions.1"),
        (TaskKind.LESSON_SECTION, "summary"),
        (TaskKind.OUTLINE, "modules.0"),
    ],
)
def test_it_answers_a_part_request_with_that_part_alone(kind: TaskKind, part: str) -> None:
    context = _lesson_context()
    schema = parts.part_schema(OUTPUT_SCHEMAS[kind], part)
    request = dataclasses.replace(_request(kind, {**context, "part": part}), schema=schema)

    completion = OfflineProvider().complete(request)

    assert completion.data == parts.extract(offline.build_content(kind, context), part)
    schema.model_validate(completion.data)
    broken = OfflineProvider(faults="invalid=1").complete(request)
    with pytest.raises(ValidationError):
        schema.model_validate(broken.data)


def test_it_replaces_a_question_with_one_unlike_the_stems_to_avoid() -> None:
    context = _lesson_context(part="questions.0")
    original = offline.build_content(TaskKind.ASSESSMENT, context)["questions"]
    request = _request(TaskKind.ASSESSMENT, {**context, "avoid": [original[0]["stem"]]})

    stem = OfflineProvider().complete(request).data["stem"]

    assert not checks.is_near_duplicate(stem, original[0]["stem"], topic=context["topic"])


@pytest.mark.parametrize(
    ("topic", "level", "size"),
    [("Photosynthesis", "beginner", (4, 3, 4)), ("SQL for data analysis", "advanced", (6, 5, 6))],
)
def test_it_writes_content_that_passes_every_content_check(
    topic: str, level: str, size: tuple[int, int, int]
) -> None:
    provider = OfflineProvider()
    course = _course(topic, *size, level=level)
    request = CourseRequest.model_validate(course)
    outline = _outline(provider, course)
    assessments = []
    for kind, context in _task_contexts(course, outline):
        data = provider.complete(_request(kind, context)).data
        outcome = validate_output(kind, data, request=request, context=context)
        assert outcome.errors == (), (kind, context.get("lesson_title"))
        if kind is TaskKind.ASSESSMENT:
            assessments.append((f"{context['module_index']}.{context['lesson_index']}", data))
    assert checks.course_duplicates(assessments, topic=topic) == []


def test_it_cuts_output_off_at_max_output_tokens() -> None:
    request = _request(TaskKind.LESSON_SECTION, _lesson_context(), max_output_tokens=50)

    with pytest.raises(InvalidOutputError, match="max_output_tokens=50") as caught:
        OfflineProvider().complete(request)

    assert caught.value.usage.output_tokens <= 51


def test_it_parses_a_full_fault_spec() -> None:
    rates = FaultRates.parse(
        "rate_limit=0.05, server_error=0.02,timeout=0.01,malformed=0.02,invalid=0.1"
    )

    assert rates == FaultRates(
        rate_limit=0.05, server_error=0.02, timeout=0.01, malformed=0.02, invalid=0.1
    )
    assert FaultRates.parse("") == FaultRates()


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("rate_limit", "'rate_limit'"),
        ("bogus=0.1", "'bogus'"),
        ("timeout=often", "'often'"),
        ("invalid=1.5", "'invalid=1.5'"),
        ("timeout=-0.1", "'timeout=-0.1'"),
        ("timeout=nan", "'timeout=nan'"),
        ("invalid=0.1,invalid=0.2", "'invalid'"),
        ("rate_limit=0.6,server_error=0.6", "sum to 1.2"),
    ],
)
def test_it_rejects_a_bad_fault_spec(spec: str, named: str, settings: Any) -> None:
    with pytest.raises(ValueError, match=named):
        FaultRates.parse(spec)
    settings.COURSEGEN_OFFLINE_FAULTS = spec
    with pytest.raises(ValueError, match=named):
        OfflineProvider.from_settings()


def test_it_injects_faults_at_the_configured_rate_reproducibly() -> None:
    def outcomes(seed: int) -> list[str]:
        provider = OfflineProvider(faults="server_error=0.2", seed=seed)
        request = _request(TaskKind.METADATA, {"topic": "chemistry"})
        results = []
        for _ in range(300):
            try:
                provider.complete(request)
                results.append("ok")
            except TransientProviderError:
                results.append("503")
        return results

    first = outcomes(seed=11)

    assert 30 <= first.count("503") <= 90
    assert outcomes(seed=11) == first
    assert outcomes(seed=12) != first


def test_it_fails_every_call_during_an_outage(tmp_path: Path, settings: Any) -> None:
    outage = tmp_path / "outage"
    settings.COURSEGEN_OFFLINE_OUTAGE_FILE = str(outage)
    provider = OfflineProvider.from_settings()
    request = _request(TaskKind.METADATA, {"topic": "chemistry"})

    provider.complete(request)  # no file: no outage
    outage.write_text(str(time.time() + 60))
    with pytest.raises(TransientProviderError) as caught:
        provider.complete(request)
    outage.write_text(f"{time.time() - 1:.3f}")  # a different size, so the change is noticed
    completion = provider.complete(request)

    assert caught.value.status_code == 503
    assert completion.data


# --- call log, settings, threads ------------------------------------------------------------------
def test_it_logs_one_line_per_call_including_failed_ones(tmp_path: Path, settings: Any) -> None:
    log = tmp_path / "calls.log"
    settings.COURSEGEN_OFFLINE_CALL_LOG = str(log)
    settings.COURSEGEN_OFFLINE_FAULTS = "server_error=0.5"
    provider = OfflineProvider.from_settings()
    context = {"topic": "chemistry", "task_key": "m1.l2", "job_id": "job-7", "attempt": 2}

    for _ in range(10):
        with contextlib.suppress(TransientProviderError):
            provider.complete(_request(TaskKind.BRAIN_BYTES, context))

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 10
    assert lines[0]["model"] == "gpt-4.1-mini" and lines[0]["kind"] == "brain_bytes"
    assert (lines[0]["task_key"], lines[0]["job_id"], lines[0]["attempt"]) == ("m1.l2", "job-7", 2)
    assert {"ts", "pid"} <= lines[0].keys() and lines[0]["variant"] is None


def test_it_logs_whole_lines_from_concurrent_threads(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    provider = OfflineProvider(call_log=str(log))
    context = _lesson_context()
    reference = provider.complete(_request(TaskKind.ASSESSMENT, context)).raw_text
    results: list[str] = []

    def work() -> None:
        for _ in range(25):
            results.append(provider.complete(_request(TaskKind.ASSESSMENT, context)).raw_text)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = log.read_text().splitlines()
    assert len(lines) == 201 and all(json.loads(line)["kind"] == "assessment" for line in lines)
    assert results == [reference] * 200


def test_it_builds_itself_from_settings(settings: Any, tmp_path: Path) -> None:
    settings.COURSEGEN_OFFLINE_LATENCY_SCALE = 0.25
    settings.COURSEGEN_OFFLINE_FAULTS = "timeout=0.1"
    settings.COURSEGEN_OFFLINE_SEED = 42
    settings.COURSEGEN_OFFLINE_CALL_LOG = str(tmp_path / "log")

    provider = OfflineProvider.from_settings()

    assert provider.name == "offline"
    assert provider.latency_scale == 0.25
    assert provider.faults == FaultRates(timeout=0.1)
    assert provider.seed == 42
    assert provider.call_log == str(tmp_path / "log")
