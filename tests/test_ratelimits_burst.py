"""Acceptance: admission and the global cap hold exactly under real concurrent bursts.

Every submit below is a real HTTP request through the API on its own thread and its own
PostgreSQL connection, all released at once. Nothing is mocked in admission: the row lock and the
counts are PostgreSQL's.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts.models import BaseClass, Membership, Role
from generation import services, tasks
from generation.models import CourseGenerationJob, JobStatus, QueueEntry, QueueState
from generation.selectors import queue_position
from ratelimits.models import Admission, RateLimitPolicy, RateLimitViolation, Window
from tests.concurrency import run_together

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 50
BODY = {"topic": "Burst testing", "num_modules": 1, "lessons_per_module": 1}


def _submit_call(user: Any, base_class: BaseClass) -> Callable[[], tuple[int, dict[str, Any]]]:
    def submit() -> tuple[int, dict[str, Any]]:
        client = APIClient()
        client.force_authenticate(user=user)
        response = client.post(
            "/api/jobs/", {"base_class": str(base_class.pk), **BODY}, format="json"
        )
        return response.status_code, response.json()

    return submit


def _burst(user: Any, base_class: BaseClass) -> list[tuple[int, dict[str, Any]]]:
    return run_together([_submit_call(user, base_class) for _ in range(BURST)])


@pytest.fixture
def nothing_starts(settings: Any) -> None:
    # No running capacity: admitted jobs wait in the queue, so each keeps its concurrency slot
    # for the whole burst instead of finishing inside its own request (eager Celery).
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 0


def test_it_admits_exactly_one_of_50_simultaneous_submits_from_a_student(
    make_member: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    student = make_member(Role.STUDENT)

    results = _burst(student, base_class)

    statuses = Counter(code for code, _ in results)
    assert statuses == {201: 1, 429: BURST - 1}
    assert CourseGenerationJob.objects.filter(owner=student).count() == 1
    assert Admission.objects.filter(user=student).count() == 1
    refusals = [body for code, body in results if code == 429]
    assert {body["window"] for body in refusals} == {Window.CONCURRENT}
    assert RateLimitViolation.objects.filter(user=student).count() == BURST - 1


def test_it_admits_exactly_three_of_50_simultaneous_submits_from_a_teacher(
    teacher: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    results = _burst(teacher, base_class)

    assert Counter(code for code, _ in results) == {201: 3, 429: BURST - 3}
    assert CourseGenerationJob.objects.filter(owner=teacher).count() == 3
    refusals = {body["window"] for code, body in results if code == 429}
    assert refusals == {Window.CONCURRENT}


def test_it_holds_the_minute_limit_when_concurrency_is_not_binding(
    teacher: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    RateLimitPolicy.objects.filter(role=Role.TEACHER).update(max_concurrent=BURST)

    results = _burst(teacher, base_class)

    assert Counter(code for code, _ in results) == {201: 5, 429: BURST - 5}
    assert CourseGenerationJob.objects.filter(owner=teacher).count() == 5
    refusals = [body for code, body in results if code == 429]
    assert {(b["window"], b["limit"], b["used"]) for b in refusals} == {(Window.MINUTE, 5, 5)}
    assert all(1 <= b["retry_after_s"] <= 60 for b in refusals)


# --- The global cap ----------------------------------------------------------------------------
USERS = 300
CAP = 10
SUBMIT_THREADS = 25  # PostgreSQL sessions for the 300 submits (max_connections is shared)
DISPATCHERS = 6


def _students(base_class: BaseClass, count: int) -> list[Any]:
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [user_model(username=f"burst-{n}", password="!") for n in range(count)]
    )
    Membership.objects.bulk_create(
        Membership(user=u, organisation_id=base_class.organisation_id, role=Role.STUDENT)
        for u in users
    )
    return users


class ClaimedMonitor:
    """Samples the number of claimed (running) queue entries on its own connection."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> ClaimedMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from django.db import connections

        try:
            while not self._stop.is_set():
                self.samples.append(services.running_job_count())
        finally:
            connections.close_all()


def _drive(started: list[UUID], lock: threading.Lock) -> int:
    """A worker loop: start what the dispatcher hands out, run each job to its end."""
    ran = 0
    while True:
        with lock:
            job_id = started.pop() if started else None
        if job_id is None:
            job_ids = services.queue_dispatch(limit=1)
            if not job_ids:
                if not QueueEntry.objects.filter(state=QueueState.QUEUED).exists():
                    return ran
                time.sleep(0.005)  # the cap is full: wait for a running job to end
                continue
            job_id = job_ids[0]
        services.job_run_outline(job_id=job_id)  # outline, then the chord runs every task
        ran += 1


def test_it_never_runs_more_than_the_global_cap_and_runs_every_queued_job(
    base_class: BaseClass, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = CAP
    # No dispatcher or worker consumes these messages: the test plays both parts below.
    monkeypatch.setattr(tasks.dispatch_queue, "apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr(tasks.run_outline, "apply_async", lambda *args, **kwargs: None)
    users = _students(base_class, USERS)

    results = run_together([_submit_call(u, base_class) for u in users], threads=SUBMIT_THREADS)

    assert Counter(code for code, _ in results) == {201: USERS}
    assert QueueEntry.objects.filter(state=QueueState.QUEUED).count() == USERS
    positions = {queue_position(job=job) for job in CourseGenerationJob.objects.all()}
    assert positions == set(range(1, USERS + 1))

    # Several dispatchers at once may claim only the cap, however they interleave.
    with ClaimedMonitor() as monitor:
        claims = run_together([lambda: services.queue_dispatch() for _ in range(DISPATCHERS)])
    started = [job_id for claim in claims for job_id in claim]
    assert len(started) == len(set(started)) == CAP
    assert services.running_job_count() == CAP
    assert max(monitor.samples) <= CAP
    assert CourseGenerationJob.objects.filter(status=JobStatus.RUNNING).count() == CAP

    # Workers run the started jobs; as each ends its slot frees and the next queued job starts.
    lock = threading.Lock()
    with ClaimedMonitor() as monitor:
        ran = run_together([lambda: _drive(started, lock) for _ in range(DISPATCHERS)])

    assert sum(ran) == USERS
    assert max(monitor.samples) <= CAP
    assert len(monitor.samples) > 10
    statuses = Counter(CourseGenerationJob.objects.values_list("status", flat=True))
    assert statuses == {JobStatus.SUCCEEDED: USERS}
    assert QueueEntry.objects.filter(state=QueueState.DONE).count() == USERS
