"""PostgreSQL's hand-written statements write what the ORM path writes."""

from __future__ import annotations

from typing import Any

import pytest

from coursegen import db
from generation import hotpath, services
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, QueueEntry
from generation.schemas import CourseRequest

pytestmark = pytest.mark.django_db

VOLATILE = {"id", "job_id", "created_at", "updated_at", "enqueued_at", "correlation_id"}


def _submitted(teacher: Any, base_class: Any) -> dict[str, Any]:
    job = services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    rows = [
        CourseGenerationJob.objects.get(pk=job.pk),
        GenerationTask.objects.get(job=job),
        QueueEntry.objects.get(job=job),
    ]
    return {
        type(row).__name__: {
            f.attname: getattr(row, f.attname)
            for f in row._meta.concrete_fields
            if f.attname not in VOLATILE
        }
        for row in rows
    }


def test_a_submit_inserts_the_same_rows_in_one_statement_as_the_orm_does(
    teacher: Any, base_class: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_statement = _submitted(teacher, base_class)
    monkeypatch.setattr(db, "hand_written_sql", lambda: False)

    assert _submitted(teacher, base_class) == one_statement


def test_rows_inserted_together_are_saved_rows(teacher: Any, base_class: Any) -> None:
    job = CourseGenerationJob(
        owner=teacher,
        organisation_id=base_class.organisation_id,
        base_class=base_class,
        request={"topic": "x"},
    )
    entry = QueueEntry(job=job, priority=3)

    hotpath.insert_together(job, entry)

    assert entry.pk is not None and not entry._state.adding
    entry.priority = 1
    entry.save()  # an UPDATE of the inserted row, not a second INSERT
    assert QueueEntry.objects.get(job=job).priority == 1
    assert CourseGenerationJob.objects.get(pk=job.pk).created_at == job.created_at


def _planned(teacher: Any, base_class: Any) -> list[dict[str, Any]]:
    from generation.providers.offline import build_content
    from generation.schemas import TaskKind

    job = services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    CourseGenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)
    outline = build_content(TaskKind.OUTLINE, {"topic": "Tides and the moon", "num_modules": 2})
    services.job_plan_tasks(job_id=job.pk, outline=outline)
    services.job_plan_tasks(job_id=job.pk, outline=outline)  # a repeated message adds nothing
    return [
        {
            f.attname: getattr(task, f.attname)
            for f in task._meta.concrete_fields
            if f.attname not in VOLATILE
        }
        for task in GenerationTask.objects.filter(job=job).order_by("position")
    ]


def test_planned_tasks_are_inserted_in_one_statement_as_the_orm_inserts_them(
    teacher: Any, base_class: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_statement = _planned(teacher, base_class)
    assert len(one_statement) == 1 + 2 * 3 * 3 + 2 + 2  # outline, lessons, summaries, course
    monkeypatch.setattr(db, "hand_written_sql", lambda: False)

    assert _planned(teacher, base_class) == one_statement
