"""Queue order: priority with aging, and the priority that Celery messages carry."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import celery
import pytest
import redis
from django.utils import timezone

from accounts.models import Role
from coursegen import db
from generation import services, tasks
from generation.models import CourseGenerationJob, Priority, QueueEntry, QueueState
from generation.schemas import CourseRequest
from generation.selectors import queue_position

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_dispatch(monkeypatch: Any) -> None:
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)  # the test dispatches


def _queued(user: Any, base_class: Any, *, priority: int, waited_s: float) -> CourseGenerationJob:
    job = services.job_submit(
        user=user, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    QueueEntry.objects.filter(job=job).update(
        priority=priority, enqueued_at=timezone.now() - timedelta(seconds=waited_s)
    )
    job.refresh_from_db()  # job_submit's instance holds the entry as it was inserted
    return job


def test_it_starts_the_higher_priority_job_first(
    make_member: Any, base_class: Any, settings: Any, no_dispatch: None, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services.dispatch, "_send_outlines", lambda job_ids: None)
    settings.COURSEGEN_QUEUE_AGING_S = 60
    user = make_member(Role.ADMIN)
    low = _queued(user, base_class, priority=Priority.LOW, waited_s=30)
    high = _queued(user, base_class, priority=Priority.HIGH, waited_s=0)

    assert queue_position(job=high) == 1 and queue_position(job=low) == 2
    assert services.queue_dispatch(limit=1) == [high.pk]


def test_it_ages_a_waiting_low_priority_job_past_newer_high_priority_ones(
    make_member: Any, base_class: Any, settings: Any, no_dispatch: None, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services.dispatch, "_send_outlines", lambda job_ids: None)
    settings.COURSEGEN_QUEUE_AGING_S = 60
    user = make_member(Role.ADMIN)
    # LOW (8) after 7 minutes is 8 - 7 = 1: ahead of a fresh HIGH (2), behind a fresh URGENT (0).
    low = _queued(user, base_class, priority=Priority.LOW, waited_s=7 * 60 + 5)
    high = _queued(user, base_class, priority=Priority.HIGH, waited_s=0)
    urgent = _queued(user, base_class, priority=Priority.URGENT, waited_s=0)

    assert [queue_position(job=j) for j in (urgent, low, high)] == [1, 2, 3]
    assert services.queue_dispatch(limit=1) == [urgent.pk]
    assert services.queue_dispatch(limit=1) == [low.pk]
    assert services.queue_dispatch(limit=1) == [high.pk]


def test_the_hand_written_queue_position_agrees_with_the_orms(
    make_member: Any, base_class: Any, settings: Any, no_dispatch: None, monkeypatch: Any
) -> None:
    settings.COURSEGEN_QUEUE_AGING_S = 60
    user = make_member(Role.ADMIN)
    # Ties on effective priority (8 - 2 == 6 - 0), equal waits, and one entry already claimed.
    waits = [(Priority.LOW, 125), (Priority.LOW - 2, 5), (Priority.NORMAL, 0), (Priority.HIGH, 0)]
    waits += [(Priority.URGENT, 30), (Priority.NORMAL, 600), (Priority.LOW, 0), (Priority.HIGH, 0)]
    jobs = [_queued(user, base_class, priority=p, waited_s=w) for p, w in waits]
    QueueEntry.objects.filter(job=jobs[3]).update(state=QueueState.CLAIMED)

    hand_written = [queue_position(job=job) for job in jobs]
    monkeypatch.setattr(db, "hand_written_sql", lambda: False)
    orm = [queue_position(job=job) for job in jobs]

    assert hand_written == orm
    assert sorted(p for p in orm if p is not None) == list(range(1, len(jobs)))
    assert orm[3] is None


def test_it_sends_the_jobs_messages_at_the_jobs_priority(
    teacher: Any,
    base_class: Any,
    no_dispatch: None,
    monkeypatch: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    sent: list[tuple[str, int | None]] = []
    chords: list[tuple[list[Any], Any]] = []

    class CapturedChord:
        def __init__(self, header: list[Any], body: Any) -> None:
            chords.append((header, body))

        def apply_async(self) -> None:
            pass

    monkeypatch.setattr(
        tasks.run_outline,
        "apply_async",
        lambda *args, **kwargs: sent.append((tasks.run_outline.name, kwargs.get("priority"))),
    )
    monkeypatch.setattr(celery, "chord", CapturedChord)
    monkeypatch.setitem(tasks.run_task.app.conf, "task_always_eager", False)  # a real chord
    job = services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.queue_dispatch()
        services.job_plan_tasks(job_id=job.pk, outline=_outline())
        services.job_dispatch_chord(job_id=job.pk)

    assert sent == [("generation.tasks.run_outline", Priority.NORMAL)]  # a teacher's job
    [(header, body)] = chords
    assert {s.task for s in header} == {tasks.run_task.name}
    assert {s.options["priority"] for s in header} == {Priority.NORMAL}
    job.refresh_from_db()  # job_submit's instance holds the tasks as inserted: the outline
    assert len(header) == job.tasks.count() - 1  # every task but the outline
    # The body frees a running slot: it goes before queued generation messages.
    assert body.task == tasks.finalize_job.name
    assert body.options["priority"] == Priority.URGENT


def test_housekeeping_messages_go_first(monkeypatch: Any, settings: Any) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.dispatch_queue, "apply_async", lambda *a, **kw: sent.append(kw))
    services.dispatch_asked_clear()
    services.send_dispatch()
    assert sent == [{"priority": Priority.URGENT}]
    for entry in ("dispatch-queued-jobs", "reconcile"):
        assert settings.CELERY_BEAT_SCHEDULE[entry]["options"]["priority"] == Priority.URGENT


def test_an_explicit_priority_reaches_the_brokers_priority_list(monkeypatch: Any) -> None:
    """On the real Redis broker (a queue of the test's own): an urgent message lands on the list
    consumed first, a job's message on its priority's list. (The default priority would beat a
    route's, which is why housekeeping passes its priority explicitly.)"""
    app = tasks.run_task.app
    monkeypatch.setitem(app.conf, "task_always_eager", False)
    queue = f"priority-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        tasks.finalize_job.si("x").set(priority=Priority.URGENT, queue=queue).apply_async()
        tasks.run_task.apply_async(args=(1,), priority=Priority.NORMAL, queue=queue)
        tasks.dispatch_queue.apply_async(queue=queue)  # no priority: the default (NORMAL)
        assert client.llen(queue) == 1  # priority 0 has no suffix
        assert client.llen(f"{queue}:{int(Priority.NORMAL)}") == 2
    finally:
        client.delete(queue, *(f"{queue}:{p}" for p in range(10)))


def _outline() -> dict[str, Any]:
    from generation.providers.offline import build_content
    from generation.schemas import TaskKind

    return build_content(TaskKind.OUTLINE, {"topic": "Tides and the moon", "num_modules": 1})
