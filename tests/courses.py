"""A finished course to test against: submitted in-process (eager Celery, offline provider)."""

from __future__ import annotations

from typing import Any

from generation import services
from generation.models import CourseGenerationJob, JobStatus
from generation.providers.base import Completion, CompletionRequest, Provider
from generation.providers.offline import OfflineProvider
from generation.providers.offline.faults import make_unsafe
from generation.providers.offline.moderation import UNSAFE_SENTENCE
from generation.schemas import CourseRequest, TaskKind


def finished_job(user: Any, base_class: Any, **overrides: Any) -> CourseGenerationJob:
    """A 1x2 course with 3 questions per lesson (fields in `overrides` replace these)."""
    fields = {"topic": "Rivers and valleys", "num_modules": 1, "lessons_per_module": 2}
    request = CourseRequest(**{**fields, "questions_per_lesson": 3, **overrides})
    job = services.job_submit(user=user, base_class=base_class, request=request)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


class SpyProvider(Provider):
    """The offline simulator, with a record of every request."""

    name = "spy"

    def __init__(self) -> None:
        self.inner = OfflineProvider()
        self.requests: list[CompletionRequest] = []

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        return self.inner.complete(request)


class DuplicatingProvider(SpyProvider):
    """Offline content, except that lesson 2's assessment repeats lesson 1's first question."""

    def __init__(self) -> None:
        super().__init__()
        self.first_stem = ""

    def complete(self, request: CompletionRequest) -> Completion:
        completion = super().complete(request)
        if request.task_kind is TaskKind.ASSESSMENT and not request.context.get("part"):
            questions = completion.data["questions"]
            if request.context["task_key"] == "m1.l1":
                self.first_stem = questions[0]["stem"]
            elif request.context["task_key"] == "m1.l2":
                questions[0]["stem"] = self.first_stem
        return completion


# Model output that tries to become markup: script tags, event handlers, javascript: URLs, an
# iframe, an image that would fetch a URL, and a tag that breaks out of an SVG <text>.
HOSTILE = {
    "title": "<script>alert('title')</script>Rivers",
    "description": "Fine text <img src=x onerror=\"alert('description')\"> and more.",
    "markdown": "See [this link](javascript:alert('link')) and <iframe src=\"javascript:alert(1)\">"
    "</iframe> and **bold** text.",
    "option": "<b onmouseover=\"alert('option')\">A trap</b>",
    "mind_map": "</text><script>alert('svg')</script><text>",
    "term": "\"><svg onload=alert('term')>",
}


def make_hostile(job: CourseGenerationJob) -> CourseGenerationJob:
    """Put HOSTILE text into every kind of field of `job`'s course document."""
    course = job.course or {}
    course["title"] = HOSTILE["title"]
    course["description"] = HOSTILE["description"]
    course["mind_map"]["central_topic"] = HOSTILE["mind_map"]
    course["mind_map"]["nodes"][0]["label"] = HOSTILE["mind_map"]
    for module in course["modules"]:
        module["title"] = HOSTILE["title"]
        module["summary"]["summary"] = HOSTILE["markdown"]
        for lesson in module["lessons"]:
            lesson["title"] = HOSTILE["title"]
            lesson["learning_objectives"][0] = HOSTILE["option"]
            section = lesson["section"]
            section["introduction"] = HOSTILE["description"]
            section["detailed_explanation"] = HOSTILE["markdown"]
            section["key_concepts"][0]["term"] = HOSTILE["term"]
            section["examples"][0]["description"] = HOSTILE["markdown"]
            lesson["brain_bytes"]["script"] = HOSTILE["markdown"]
            question = lesson["assessment"]["questions"][0]
            question["stem"] = HOSTILE["title"]
            question["explanation"] = HOSTILE["markdown"]
            if question["options"]:
                question["options"][0] = HOSTILE["option"]
                question["correct_answer"] = HOSTILE["option"]
    job.course = course
    job.save(update_fields=["course"])
    return job


class UnsafeProvider(SpyProvider):
    """Offline content, except that some tasks' replies carry a sentence moderation flags:
    `always` on every call, `first_only` on the first call only."""

    def __init__(self, always: set[str] = frozenset(), first_only: set[str] = frozenset()):  # type: ignore[assignment]
        super().__init__()
        self.always, self.first_only = always, first_only

    def complete(self, request: CompletionRequest) -> Completion:
        completion = super().complete(request)
        name = f"{request.task_kind.value} {request.context.get('task_key')}"
        first = request.context.get("attempt") == 1
        if name in self.always or (name in self.first_only and first):
            data = make_unsafe(completion.data, UNSAFE_SENTENCE)
            return Completion(**{**completion.__dict__, "data": data})
        return completion
