"""One lock order (issue 20, item 5): a job's row before its queue entry's.

The dispatcher used to lock queue entries and then their jobs, while `job_cancel`,
`job_set_priority` and `job_resume` lock a job and then its entry: a cancel arriving during a
dispatch deadlocked (PostgreSQL killed one of the two, a 500 for the user or a rolled-back
dispatch). These tests pin the interleaving with two sessions on threads and fail with
"deadlock detected" without the fix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections

from generation import services
from generation.models import CourseGenerationJob, JobStatus, QueueEntry, QueueState
from generation.schemas import CourseRequest

pytestmark = pytest.mark.django_db(transaction=True)


def _queued_job(user: Any, base_class: Any, monkeypatch: Any) -> CourseGenerationJob:
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)  # the test dispatches
    return services.job_submit(
        user=user, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )


def _waiting_on_a_lock() -> bool:
    """True when another session of this database waits for a row lock (the main thread polls
    in autocommit, so every call sees the sessions as they are now)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return bool(cursor.fetchone()[0])


def _in_thread(call: Callable[[], Any], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            call()
        except BaseException as exc:  # collected: the test asserts there were none
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _dispatch_while_the_job_is_locked(
    monkeypatch: Any, control: Callable[[], Any], hook_name: str
) -> tuple[list[BaseException], list[Any]]:
    """Run `control` (which locks the job first) up to `hook_name`, where it holds the job's lock
    and is about to touch the queue entry; run a dispatcher then, and let the control go on once
    the dispatcher either waits for a lock or has finished."""
    job_locked, go_on = threading.Event(), threading.Event()
    original = getattr(services.dispatch, hook_name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        job_locked.set()
        assert go_on.wait(timeout=30)
        return original(*args, **kwargs)

    monkeypatch.setattr(services.dispatch, hook_name, hooked)
    errors: list[BaseException] = []
    started: list[Any] = []
    controller = _in_thread(control, errors)
    assert job_locked.wait(timeout=30)
    dispatcher = _in_thread(lambda: started.extend(services.queue_dispatch()), errors)
    deadline = time.monotonic() + 20
    while dispatcher.is_alive() and not _waiting_on_a_lock() and time.monotonic() < deadline:
        time.sleep(0.02)
    go_on.set()
    controller.join(timeout=60)
    dispatcher.join(timeout=60)
    return errors, started


def test_a_cancel_during_a_dispatch_does_not_deadlock(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _queued_job(teacher, base_class, monkeypatch)

    errors, started = _dispatch_while_the_job_is_locked(
        monkeypatch, lambda: services.job_cancel(job_id=job.pk), "queue_entry_close"
    )

    assert errors == []  # before the fix: psycopg.errors.DeadlockDetected in one of the two
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert QueueEntry.objects.get(job=job).state == QueueState.CANCELLED
    assert started == []  # the dispatcher passed over the job being cancelled
    assert services.queue_dispatch() == []  # and it is not started later either


def test_a_priority_change_during_a_dispatch_does_not_deadlock(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _queued_job(teacher, base_class, monkeypatch)

    errors, started = _dispatch_while_the_job_is_locked(
        monkeypatch,
        lambda: services.job_set_priority(job_id=job.pk, priority=2),
        "queue_entry_reprioritise",
    )

    assert errors == []
    assert QueueEntry.objects.get(job=job).priority == 2
    assert started == []  # passed over while its priority changed: the next run starts it
    assert services.queue_dispatch() == [job.pk]
    job.refresh_from_db()
    assert job.status != JobStatus.QUEUED and job.priority == 2  # (eager Celery runs it through)
