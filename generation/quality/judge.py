"""One call of the judge on one lesson, without the database: the calibration command and the
judge's runs (judging.py) both come through here, so they measure the same thing.

The call goes through the LLM conversation (generation/llm.py) like any task: the provider seam,
the model's circuit breaker and concurrency limit, transport retries, re-asks of an invalid
verdict; every call is an attempt of kind `judge` in the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from generation.llm import BatchReplay, GenerationResult, Review, TaskSpec, generate
from generation.providers import Provider
from generation.quality import prompt
from generation.rubric import LessonVerdict
from generation.schemas import CourseRequest, TaskKind, Tier


@dataclass(frozen=True)
class JudgedLesson:
    """One lesson as the judge reads it: the course's request, the lesson's objectives, its
    section and its questions."""

    key: str
    request: CourseRequest
    title: str
    objectives: list[str]
    section: Mapping[str, Any]
    questions: Sequence[Mapping[str, Any]] = ()

    @classmethod
    def from_course(cls, course: Mapping[str, Any], key: str) -> JudgedLesson:
        """The lesson `key` (m2.l3) of an assembled course (generation/assembly.py)."""
        for module in course.get("modules", []):
            for lesson in module.get("lessons", []):
                if lesson.get("key") == key:
                    return cls(
                        key=key,
                        request=CourseRequest.model_validate(course["request"]),
                        title=str(lesson.get("title", "")),
                        objectives=list(lesson.get("learning_objectives") or []),
                        section=lesson.get("section") or {},
                        questions=list((lesson.get("assessment") or {}).get("questions") or []),
                    )
        raise KeyError(f"the course has no lesson {key}")

    def context(self) -> dict[str, Any]:
        """The lesson as structured facts (real providers ignore it; the simulator reads it)."""
        return {
            "topic": self.request.topic,
            "audience": self.request.audience,
            "level": self.request.level.value,
            "language": self.request.language,
            "objectives": self.objectives,
            "section": dict(self.section),
            "questions": [dict(q) for q in self.questions],
        }

    def messages(self) -> tuple[Any, ...]:
        return prompt.judge_messages(
            course=self.request.model_dump(mode="json"),
            title=self.title,
            objectives=self.objectives,
            section=self.section,
            questions=self.questions,
        )


@dataclass
class JudgeOutcome:
    verdict: LessonVerdict | None
    result: GenerationResult
    simulated: bool  # the offline provider's simulated judge answered

    @property
    def model(self) -> str:
        return self.result.attempts[-1].model if self.result.attempts else ""


def judge_tier() -> Tier:
    return Tier(settings.COURSEGEN_JUDGE_TIER)


def judge_model() -> str:
    if settings.COURSEGEN_JUDGE_MODEL:
        return str(settings.COURSEGEN_JUDGE_MODEL)
    tier = judge_tier()
    return str(
        settings.COURSEGEN_MODEL_COMPLEX
        if tier is Tier.COMPLEX
        else settings.COURSEGEN_MODEL_SIMPLE
    )


def judge_lesson(
    lesson: JudgedLesson,
    *,
    provider: Provider,
    model: str | None = None,
    job_id: str = "",
    heartbeat: Callable[[], bool] | None = None,
    batch: BatchReplay | None = None,
) -> JudgeOutcome:
    """Ask the judge for a verdict on `lesson`; every call made is in the outcome's result.
    `batch`: a Batch API line's answer taken as the first call's (docs/batch.md)."""
    spec = TaskSpec(
        kind=TaskKind.LESSON_SECTION,
        tier=judge_tier(),
        model=model or judge_model(),
        request=lesson.request,
        outline=None,
        context={"judged": lesson.context(), "task_key": lesson.key, "job_id": job_id},
        review=Review(messages=lesson.messages(), schema=LessonVerdict),
        heartbeat=heartbeat,
        deadline=time.monotonic() + settings.COURSEGEN_TASK_DEADLINE_S,
    )
    result = generate(spec, provider, batch=batch)
    verdict = LessonVerdict.model_validate(result.data) if result.ok else None
    return JudgeOutcome(verdict=verdict, result=result, simulated=provider.name == "offline")
