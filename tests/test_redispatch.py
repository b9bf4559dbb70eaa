"""The reconciler and messages still waiting in the broker (issue 20, items 6 and 7).

A pending task whose message is overdue may be lost, or may only be waiting behind a saturated
broker. The reconciler used to re-send it every COURSEGEN_REDISPATCH_AFTER_S (120 s) for as long
as it waited, multiplying broker depth exactly when the system was saturated; now each re-send
since a worker last picked the task up doubles the wait before the next. And a job's messages
used to keep the priority of its role once admitted (a student's at 8, behind all other traffic,
while the job held a running slot); now the queue's aging carries on into the broker: every
message a job sends, re-sends included, goes at the job's aged priority.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from django.utils import timezone

from accounts.models import Role
from generation import recovery, services, tasks
from generation.models import CourseGenerationJob, GenerationTask, Priority, QueueEntry, TaskStatus
from generation.queueing import aged_broker_priority
from generation.schemas import CourseRequest, TaskKind

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch: Any) -> list[tuple[int, int]]:
    """run_task messages as (task id, priority); none is delivered (they wait in the broker)."""
    captured: list[tuple[int, int]] = []

    def apply_async(args: tuple[int], priority: int, **_: Any) -> None:
        captured.append((args[0], priority))

    monkeypatch.setattr(tasks.run_task, "apply_async", apply_async)
    return captured


def _admitted_student_job(
    make_member: Any, base_class: Any, monkeypatch: Any, *, waited_s: float = 0
) -> tuple[CourseGenerationJob, list[tuple[UUID, list[int], int]]]:
    """A student's job (LOW) that waited `waited_s` in the queue, whose outline ran and whose
    chord was sent; the chord's messages (job, task ids, priority) are captured, not delivered."""
    chords: list[tuple[UUID, list[int], int]] = []
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: chords.append(args))
    request = CourseRequest(topic="Tides and the moon", num_modules=1, lessons_per_module=1)
    job = services.job_submit(
        user=make_member(Role.STUDENT), base_class=base_class, request=request
    )
    earlier = timezone.now() - timedelta(seconds=waited_s)
    CourseGenerationJob.objects.filter(pk=job.pk).update(created_at=earlier)
    QueueEntry.objects.filter(job=job).update(enqueued_at=earlier)
    assert services.queue_dispatch() == [job.pk]  # eager: the outline runs, the chord is sent
    job.refresh_from_db()
    if job.chord_dispatched_at is None:  # the test holds the outline's message: run it here
        services.job_run_outline(job_id=job.pk)
        job.refresh_from_db()
    assert job.priority == Priority.LOW and job.chord_dispatched_at is not None
    return job, chords


def _reconcile_every(seconds: int, *, for_s: int, start: datetime) -> None:
    for elapsed in range(seconds, for_s + 1, seconds):
        recovery.reconcile(now=start + timedelta(seconds=elapsed))


def test_a_message_waiting_in_the_broker_is_resent_with_a_growing_wait(
    make_member: Any, base_class: Any, monkeypatch: Any, settings: Any, sent: list[Any]
) -> None:
    settings.COURSEGEN_REDISPATCH_AFTER_S = 120
    settings.COURSEGEN_REDISPATCH_MAX_S = 1800
    settings.COURSEGEN_JOB_WATCHDOG_S = 7200  # not what this test is about
    job, _ = _admitted_student_job(make_member, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)
    start = task.dispatched_at
    assert start is not None

    # An hour of reconciler runs (every 30 s) while no worker picks the message up.
    _reconcile_every(30, for_s=3600, start=start)

    resends = [priority for task_id, priority in sent if task_id == task.pk]
    # Waits of 120, 240, 480, 960 s: re-sent 4 times in the hour (every 120 s before: 23 times).
    assert len(resends) == 4
    task.refresh_from_db()
    assert task.redispatches == 4 and task.status == TaskStatus.PENDING

    # A worker picks it up: the back-off starts again from the first wait.
    assert services.task_claim(task_id=task.pk, worker="w1")
    task.refresh_from_db()
    assert task.redispatches == 0


def test_the_wait_between_resends_stops_growing_at_its_cap(
    make_member: Any, base_class: Any, monkeypatch: Any, settings: Any, sent: list[Any]
) -> None:
    settings.COURSEGEN_REDISPATCH_AFTER_S = 100
    settings.COURSEGEN_REDISPATCH_MAX_S = 300
    settings.COURSEGEN_JOB_WATCHDOG_S = 7200
    job, _ = _admitted_student_job(make_member, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.METADATA)
    assert task.dispatched_at is not None

    _reconcile_every(50, for_s=1800, start=task.dispatched_at)

    # Sent again after waits of 100, 200, then 300 s at most: at 150, 400, 750, 1100, 1450, 1800.
    assert len([1 for task_id, _ in sent if task_id == task.pk]) == 6


def test_a_job_that_waited_in_the_queue_sends_its_messages_at_its_aged_priority(
    make_member: Any, base_class: Any, monkeypatch: Any, settings: Any
) -> None:
    settings.COURSEGEN_QUEUE_AGING_S = 60
    outlines: list[int] = []
    monkeypatch.setattr(
        tasks.run_outline,
        "apply_async",
        lambda *args, **kwargs: outlines.append(kwargs["priority"]),
    )
    _, chords = _admitted_student_job(make_member, base_class, monkeypatch, waited_s=5 * 60 + 5)

    # LOW (8) less one step per minute waited: 3, not the 8 of a student's role.
    assert outlines == [3]
    [(_, task_ids, priority)] = chords
    assert priority == 3
    sent_at = set(
        GenerationTask.objects.filter(pk__in=task_ids).values_list("priority_sent", flat=True)
    )
    assert sent_at == {3}


def test_a_late_task_is_resent_at_a_better_priority_the_longer_it_waits(
    make_member: Any, base_class: Any, monkeypatch: Any, settings: Any, sent: list[Any]
) -> None:
    settings.COURSEGEN_QUEUE_AGING_S = 60
    settings.COURSEGEN_REDISPATCH_AFTER_S = 120
    settings.COURSEGEN_JOB_WATCHDOG_S = 7200
    job, [(_, _, first)] = _admitted_student_job(make_member, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.ASSESSMENT)
    assert first == Priority.LOW and task.dispatched_at is not None

    _reconcile_every(30, for_s=1000, start=job.created_at)

    # Re-sent at 150 s (8 - 2), 420 s (8 - 7) and 930 s (capped at 0): it overtakes newer work.
    assert [priority for task_id, priority in sent if task_id == task.pk] == [6, 1, 0]
    task.refresh_from_db()
    assert task.priority_sent == 0


def test_the_aged_priority_steps_once_per_aging_interval(settings: Any) -> None:
    settings.COURSEGEN_QUEUE_AGING_S = 60
    since = timezone.now()
    ages = [0, 59, 60, 119, 120, 7 * 60, 3600]
    assert [
        aged_broker_priority(priority=Priority.LOW, since=since, now=since + timedelta(seconds=s))
        for s in ages
    ] == [8, 8, 7, 7, 6, 1, 0]
    assert aged_broker_priority(priority=Priority.URGENT, since=since, now=since) == 0
