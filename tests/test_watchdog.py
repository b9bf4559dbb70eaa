"""The job-level watchdog (issue 20, item 8).

An unexpected exception in the outline's planning or in finalize used to leave a job running,
its slot held, with no timeout and no alert; and an exception while the reconciler finalized one
job aborted the rest of its run. Now a running job with no live task and no progress for
COURSEGEN_JOB_WATCHDOG_S is failed with a critical alert (staff can resume it), and every step
of the reconciler, and every job it finalizes, is on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from django.utils import timezone

from generation import recovery, services, tasks
from generation.models import (
    CourseGenerationJob,
    GenerationTask,
    JobStatus,
    QueueEntry,
    QueueState,
    TaskStatus,
)
from generation.schemas import CourseRequest, TaskKind
from generation.selectors import jobs_stuck
from monitoring.models import Alert, AlertSeverity

pytestmark = pytest.mark.django_db(transaction=True)

HOURS_AGO = timedelta(hours=2)


@pytest.fixture(autouse=True)
def messages_lost(monkeypatch: Any, settings: Any) -> None:
    """Nothing the reconciler re-sends is delivered: the jobs here stay as the test left them."""
    settings.COURSEGEN_JOB_WATCHDOG_S = 3600
    monkeypatch.setattr(tasks.run_task, "apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr(tasks.run_outline, "apply_async", lambda *args, **kwargs: None)


def _submit(teacher: Any, base_class: Any) -> CourseGenerationJob:
    request = CourseRequest(topic="Tides and the moon", num_modules=1, lessons_per_module=1)
    job = services.job_submit(user=teacher, base_class=base_class, request=request)
    return CourseGenerationJob.objects.get(pk=job.pk)


def _planned_long_ago(teacher: Any, base_class: Any, monkeypatch: Any) -> CourseGenerationJob:
    """A running job whose outline ran and whose tasks were sent two hours ago; none ran since."""
    with monkeypatch.context() as patch:
        patch.setattr(services.planning, "_send_chord", lambda *args: None)
        job = _submit(teacher, base_class)
        services.job_run_outline(job_id=job.pk)  # its message was held: run it here
    long_ago = timezone.now() - HOURS_AGO
    CourseGenerationJob.objects.filter(pk=job.pk).update(started_at=long_ago)
    GenerationTask.objects.filter(job=job).update(dispatched_at=long_ago)
    GenerationTask.objects.filter(job=job, kind=TaskKind.OUTLINE).update(
        started_at=long_ago, finished_at=long_ago
    )
    return job


def test_a_job_whose_planning_crashed_is_failed_with_an_alert_and_frees_its_slot(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    # The outline succeeded two hours ago, then planning raised: no chord, no task, no progress.
    with monkeypatch.context() as patch:
        patch.setattr(services.dispatch, "_send_outlines", lambda job_ids: None)
        job = _submit(teacher, base_class)
    long_ago = timezone.now() - HOURS_AGO
    CourseGenerationJob.objects.filter(pk=job.pk).update(started_at=long_ago)
    GenerationTask.objects.filter(job=job).update(
        status=TaskStatus.SUCCEEDED, started_at=long_ago, finished_at=long_ago
    )
    assert QueueEntry.objects.get(job=job).state == QueueState.CLAIMED  # holds a running slot

    report = recovery.reconcile()

    job.refresh_from_db()
    assert report.stuck_jobs_failed == 1
    assert job.status == JobStatus.FAILED
    assert "no progress for" in job.error and job.finished_at is not None
    assert QueueEntry.objects.get(job=job).state == QueueState.DONE  # the slot is free
    alert = Alert.objects.get(subject="job failed")
    assert alert.severity == AlertSeverity.CRITICAL and str(job.pk) in alert.message
    assert recovery.reconcile().stuck_jobs_failed == 0  # once


def test_a_stuck_job_is_failed_with_its_open_tasks_and_can_be_resumed(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_long_ago(teacher, base_class, monkeypatch)
    assert jobs_stuck(now=timezone.now()).filter(pk=job.pk).exists()

    recovery.reconcile()

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    open_tasks = GenerationTask.objects.filter(job=job).exclude(kind=TaskKind.OUTLINE)
    assert set(open_tasks.values_list("status", flat=True)) == {TaskStatus.FAILED}
    assert not jobs_stuck(now=timezone.now()).exists()
    recovery.job_resume(job_id=job.pk)  # staff put it back to work (and it is started again)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert set(open_tasks.values_list("status", flat=True)) == {TaskStatus.PENDING}


@pytest.mark.parametrize(
    "alive",
    [
        "a task holds a live lease (a long call)",
        "a deferred task is due again later (an outage being waited out)",
        "a task finished a minute ago",
        "a task was picked up a minute ago",
    ],
)
def test_the_watchdog_leaves_a_job_alone_that_has_a_live_task_or_progress(
    teacher: Any, base_class: Any, monkeypatch: Any, alive: str
) -> None:
    job = _planned_long_ago(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.filter(job=job, kind=TaskKind.LESSON_SECTION)
    minute_ago = timezone.now() - timedelta(minutes=1)
    changes: dict[str, Callable[[], Any]] = {
        "a task holds a live lease (a long call)": lambda: (
            services.task_claim(task_id=task.get().pk, worker="alive")
            and task.update(started_at=timezone.now() - HOURS_AGO)
        ),
        "a deferred task is due again later (an outage being waited out)": lambda: task.update(
            dispatched_at=timezone.now() + timedelta(seconds=30)
        ),
        "a task finished a minute ago": lambda: task.update(
            status=TaskStatus.SUCCEEDED, finished_at=minute_ago
        ),
        "a task was picked up a minute ago": lambda: task.update(started_at=minute_ago),
    }
    changes[alive]()

    report = recovery.reconcile()

    job.refresh_from_db()
    assert report.stuck_jobs_failed == 0
    assert job.status == JobStatus.RUNNING


def test_one_bad_job_does_not_abort_the_reconcile_run(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    # Two jobs whose chord body never fired, every task done: the reconciler finalizes them.
    with monkeypatch.context() as patch:
        patch.setattr(services.planning, "_send_chord", lambda *args: None)
        jobs = [_submit(teacher, base_class) for _ in range(2)]
        for job in jobs:
            services.job_run_outline(job_id=job.pk)
    for task_id in GenerationTask.objects.filter(status=TaskStatus.PENDING).values_list(
        "pk", flat=True
    ):
        services.task_run(task_id=task_id)
    bad = jobs[0].pk
    finalize = services.job_finalize

    def crashing(*, job_id: UUID) -> CourseGenerationJob:
        if job_id == bad:
            raise RuntimeError("a bug in finalize")
        return finalize(job_id=job_id)

    monkeypatch.setattr(services, "job_finalize", crashing)

    report = recovery.reconcile(now=timezone.now() + timedelta(minutes=10))

    assert report.finalized_jobs == 1 and report.errors == 1
    statuses = dict(CourseGenerationJob.objects.values_list("pk", "status"))
    assert statuses == {bad: JobStatus.RUNNING, jobs[1].pk: JobStatus.SUCCEEDED}


def test_a_failing_step_does_not_stop_the_others(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(services.dispatch, "send_dispatch", lambda: None)
        job = _submit(teacher, base_class)  # committed, never dispatched

    def broken(**kwargs: Any) -> int:
        raise RuntimeError("a bug in the outline re-send")

    monkeypatch.setattr(recovery, "_redispatch_outlines", broken)

    report = recovery.reconcile()

    assert report.errors == 1 and report.started_jobs == 1
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
