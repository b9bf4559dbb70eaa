"""A finished course to test against: submitted in-process (eager Celery, offline provider)."""

from __future__ import annotations

from typing import Any

from generation import services
from generation.models import CourseGenerationJob, JobStatus
from generation.schemas import CourseRequest


def finished_job(user: Any, base_class: Any, **overrides: Any) -> CourseGenerationJob:
    """A 1x2 course with 3 questions per lesson (fields in `overrides` replace these)."""
    fields = {"topic": "Rivers and valleys", "num_modules": 1, "lessons_per_module": 2}
    request = CourseRequest(**{**fields, "questions_per_lesson": 3, **overrides})
    job = services.job_submit(user=user, base_class=base_class, request=request)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job
