"""The pipeline end to end in-process (eager Celery) on PostgreSQL with the offline provider."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import Role
from generation import services
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    QueueEntry,
    QueueState,
    TaskStatus,
)
from generation.schemas import CourseRequest, TaskKind

pytestmark = pytest.mark.django_db(transaction=True)


def _submit(user: Any, base_class: Any, **overrides: Any) -> CourseGenerationJob:
    request = CourseRequest(topic="Volcanoes and plate tectonics", **overrides)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    return CourseGenerationJob.objects.get(pk=job.pk)


def test_it_generates_a_standard_course_end_to_end(teacher: Any, base_class: Any) -> None:
    job = _submit(teacher, base_class, num_modules=4, lessons_per_module=3)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.progress == 100
    tasks = GenerationTask.objects.filter(job=job)
    # outline + 12 x (section, assessment, brain bytes) + 4 module summaries + mind map + metadata
    assert tasks.count() == 43
    assert set(tasks.values_list("status", flat=True)) == {TaskStatus.SUCCEEDED}
    attempts = GenerationAttempt.objects.filter(task__job=job)
    assert attempts.exclude(kind="moderation").count() == 43
    # every task's output was moderated once (and passed); moderation calls cost nothing
    moderated = attempts.filter(kind="moderation")
    assert moderated.count() == 43 and set(moderated.values_list("outcome", flat=True)) == {"ok"}
    assert not moderated.exclude(cost_usd=0).exists()
    assert set(tasks.values_list("moderation", flat=True)) == {"passed"}
    course = job.course
    assert course is not None
    assert len(course["modules"]) == 4
    assert all(len(m["lessons"]) == 3 for m in course["modules"])
    lesson = course["modules"][1]["lessons"][2]
    assert lesson["key"] == "m2.l3"
    assert len(lesson["section"]["detailed_explanation"]) >= 500
    assert lesson["assessment"]["questions"]
    assert course["mind_map"]["central_topic"]
    assert job.output_tokens > 0 and job.cost_usd > 0
    assert job.output_tokens == sum(t.output_tokens for t in tasks)
    assert QueueEntry.objects.get(job=job).state == QueueState.DONE


def test_it_routes_complex_and_simple_tasks_to_their_models(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_MODEL_COMPLEX = "gpt-4.1-mini"
    settings.COURSEGEN_MODEL_SIMPLE = "gpt-4.1-nano"
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)

    models = dict(GenerationTask.objects.filter(job=job).values_list("kind", "model"))
    assert models[TaskKind.LESSON_SECTION] == "gpt-4.1-mini"
    assert models[TaskKind.ASSESSMENT] == "gpt-4.1-mini"
    assert models[TaskKind.BRAIN_BYTES] == "gpt-4.1-mini"
    assert models[TaskKind.MIND_MAP] == "gpt-4.1-nano"
    assert models[TaskKind.METADATA] == "gpt-4.1-nano"
    assert models[TaskKind.MODULE_SUMMARY] == "gpt-4.1-nano"


def test_it_does_not_call_the_provider_again_for_a_succeeded_task(
    teacher: Any, base_class: Any, tmp_path: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_CALL_LOG = str(tmp_path / "calls.log")
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)
    task = GenerationTask.objects.filter(job=job, kind=TaskKind.LESSON_SECTION).get()
    calls_before = (tmp_path / "calls.log").read_text().count("\n")

    result = services.task_run(task_id=task.pk)

    assert result.ran is False and result.status == TaskStatus.SUCCEEDED
    assert (tmp_path / "calls.log").read_text().count("\n") == calls_before


def test_it_leaves_a_task_leased_by_another_worker_alone(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = ""
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)
    task = GenerationTask.objects.filter(job=job, kind=TaskKind.METADATA).get()
    GenerationTask.objects.filter(pk=task.pk).update(status=TaskStatus.PENDING)
    assert services.task_claim(task_id=task.pk, worker="other") is True

    assert services.task_claim(task_id=task.pk, worker="me") is False


def test_it_fails_the_job_when_a_task_keeps_failing(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    # Not "invalid": each invalid reply breaks one part, and two replies that broke different
    # parts now combine into a valid object. Truncated JSON cannot be salvaged.
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)

    assert job.status == JobStatus.FAILED
    outline = GenerationTask.objects.get(job=job, kind=TaskKind.OUTLINE)
    assert outline.status == TaskStatus.FAILED
    assert outline.attempts >= 2  # re-asked before giving up
    assert outline.validation_errors
    assert "outline course" in job.error
    assert QueueEntry.objects.get(job=job).state == QueueState.DONE


def test_it_retries_transient_errors_and_records_every_attempt(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = "server_error=0.3"
    settings.COURSEGEN_OFFLINE_SEED = 7
    settings.COURSEGEN_TRANSIENT_BASE_WAIT_S = 0
    settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS = 8
    job = _submit(teacher, base_class, num_modules=2, lessons_per_module=2)

    assert job.status == JobStatus.SUCCEEDED, job.error
    retried = GenerationAttempt.objects.filter(task__job=job, outcome="transient")
    assert retried.exists()
    assert GenerationAttempt.objects.filter(
        task__job=job, kind="transport_retry", outcome="ok"
    ).exists()


def test_it_keeps_jobs_queued_above_the_global_cap(
    make_member: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 1
    user = make_member(Role.TEACHER)
    blocker = CourseGenerationJob.objects.create(
        owner=user,
        organisation=base_class.organisation,
        base_class=base_class,
        request={"topic": "x"},
        status=JobStatus.RUNNING,
    )
    QueueEntry.objects.create(job=blocker, state=QueueState.CLAIMED)

    job = _submit(user, base_class, num_modules=1, lessons_per_module=1)

    assert job.status == JobStatus.QUEUED
    services.job_cancel(job_id=blocker.pk)  # frees the slot; the dispatcher starts the next job
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_it_starts_queued_jobs_in_priority_order(
    make_member: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 0 + 1
    student, admin = make_member(Role.STUDENT), make_member(Role.ADMIN)
    blocker = CourseGenerationJob.objects.create(
        owner=admin,
        organisation=base_class.organisation,
        base_class=base_class,
        request={"topic": "x"},
        status=JobStatus.RUNNING,
    )
    QueueEntry.objects.create(job=blocker, state=QueueState.CLAIMED)
    low = _submit(student, base_class, num_modules=1, lessons_per_module=1)
    high = _submit(admin, base_class, num_modules=1, lessons_per_module=1)
    assert low.priority > high.priority  # admins outrank students; lower runs sooner

    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 2
    assert services.queue_dispatch(limit=1) == [high.pk]
