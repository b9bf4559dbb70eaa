"""Resilience: circuit breaker, deferral, reconciler (outbox, lost messages, expired leases),
task-level recovery from the API, the admin and the command, and idempotent submission."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.sites import AdminSite
from django.contrib.messages.storage.fallback import FallbackStorage
from django.core.management import call_command
from django.db import IntegrityError, connection
from django.test import RequestFactory
from django.utils import timezone

from generation import recovery, services
from generation.admin import JobAdmin, TaskAdmin
from generation.breaker import BreakerState, CircuitBreaker
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    IdempotencyKey,
    JobStatus,
    QueueEntry,
    QueueState,
    TaskStatus,
)
from generation.schemas import CourseRequest, TaskKind

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"num_modules": 1, "lessons_per_module": 1}


def _submit(user: Any, base_class: Any, **overrides: Any) -> CourseGenerationJob:
    request = CourseRequest(topic="Tides and the moon", **{**SMALL, **overrides})
    job = services.job_submit(user=user, base_class=base_class, request=request)
    return CourseGenerationJob.objects.get(pk=job.pk)


def _calls(path: Path) -> int:
    """Generation calls in the offline provider's call log (the judge's are not a task's)."""
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"kind": "judge"' not in line)


class Clock:
    def __init__(self, monkeypatch: Any, start: float = 1_000_000.0):
        self.now = start
        monkeypatch.setattr("generation.breaker.time.time", lambda: self.now)


@pytest.fixture
def breaker_settings(settings: Any) -> Any:
    settings.COURSEGEN_BREAKER_WINDOW_S = 60
    settings.COURSEGEN_BREAKER_MIN_CALLS = 4
    settings.COURSEGEN_BREAKER_FAILURE_RATE = 0.5
    settings.COURSEGEN_BREAKER_OPEN_S = 30
    return settings


# --- Circuit breaker ------------------------------------------------------------------------------
def test_it_opens_the_breaker_on_the_failure_rate_after_the_minimum_calls(
    breaker_settings: Any, monkeypatch: Any
) -> None:
    Clock(monkeypatch)
    breaker = CircuitBreaker("m")
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state() == BreakerState.CLOSED  # 3 calls: below the minimum

    breaker.record_failure()

    assert breaker.state() == BreakerState.OPEN


def test_it_stays_closed_while_failures_are_below_the_rate(breaker_settings: Any) -> None:
    breaker = CircuitBreaker("m")
    for _ in range(6):
        breaker.record_success()
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state() == BreakerState.CLOSED


def test_it_probes_once_when_half_open_and_closes_on_success(
    breaker_settings: Any, monkeypatch: Any
) -> None:
    clock = Clock(monkeypatch)
    breaker = CircuitBreaker("m")
    for _ in range(4):
        breaker.record_failure()
    with pytest.raises(Exception, match="open"):
        breaker.before_call()

    clock.now += 31
    assert breaker.state() == BreakerState.HALF_OPEN
    assert breaker.before_call() is True  # this caller probes
    with pytest.raises(Exception, match="open"):
        breaker.before_call()  # the others keep waiting
    breaker.record_success(probe=True)

    assert breaker.state() == BreakerState.CLOSED
    assert breaker.before_call() is False


def test_it_reopens_when_the_probe_fails(breaker_settings: Any, monkeypatch: Any) -> None:
    clock = Clock(monkeypatch)
    breaker = CircuitBreaker("m")
    for _ in range(4):
        breaker.record_failure()
    clock.now += 31
    assert breaker.before_call() is True

    breaker.record_failure(probe=True)

    assert breaker.state() == BreakerState.OPEN


def test_it_does_not_count_validation_failures(
    breaker_settings: Any, teacher: Any, base_class: Any
) -> None:
    breaker_settings.COURSEGEN_OFFLINE_FAULTS = "invalid=1.0"
    _submit(teacher, base_class)
    assert CircuitBreaker(breaker_settings.COURSEGEN_MODEL_COMPLEX).state() == BreakerState.CLOSED


def test_it_defers_tasks_while_the_breaker_is_open(
    breaker_settings: Any, teacher: Any, base_class: Any, tmp_path: Path
) -> None:
    breaker_settings.COURSEGEN_OFFLINE_CALL_LOG = str(tmp_path / "calls.log")
    job = _submit(teacher, base_class)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.METADATA)
    GenerationTask.objects.filter(pk=task.pk).update(status=TaskStatus.PENDING)
    calls = _calls(tmp_path / "calls.log")
    simple = CircuitBreaker(breaker_settings.COURSEGEN_MODEL_SIMPLE)
    for _ in range(4):
        simple.record_failure()

    result = services.task_run(task_id=task.pk)

    task.refresh_from_db()
    assert result.retry_in is not None and result.retry_in > 0
    assert (task.status, task.deferrals, task.worker) == (TaskStatus.PENDING, 1, "")
    assert _calls(tmp_path / "calls.log") == calls  # no call went out


def test_it_falls_back_to_the_other_tier_when_allowed(
    breaker_settings: Any, teacher: Any, base_class: Any
) -> None:
    breaker_settings.COURSEGEN_BREAKER_FALLBACK_TIER = True
    job = _submit(teacher, base_class)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.METADATA)
    GenerationTask.objects.filter(pk=task.pk).update(status=TaskStatus.PENDING)
    for _ in range(4):
        CircuitBreaker(breaker_settings.COURSEGEN_MODEL_SIMPLE).record_failure()

    services.task_run(task_id=task.pk)

    task.refresh_from_db()
    assert task.status == TaskStatus.SUCCEEDED
    assert task.model == breaker_settings.COURSEGEN_MODEL_COMPLEX


def test_it_rides_out_a_provider_outage_by_deferring(
    breaker_settings: Any, teacher: Any, base_class: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    # Transient retries run out during the outage; the task is deferred, not failed.
    breaker_settings.COURSEGEN_BREAKER_MIN_CALLS = 10_000  # this test is about deferral alone
    breaker_settings.COURSEGEN_TRANSIENT_BASE_WAIT_S = 0
    breaker_settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS = 2
    breaker_settings.COURSEGEN_TASK_DEFER_MAX_S = 0.01
    outage = tmp_path / "outage"
    breaker_settings.COURSEGEN_OFFLINE_OUTAGE_FILE = str(outage)
    real_sleep = __import__("time").sleep
    state = {"deferrals": 0}

    def sleep(seconds: float) -> None:  # the eager deferral loop sleeps: end the outage there
        state["deferrals"] += 1
        if state["deferrals"] >= 2:
            outage.write_text("0")
        real_sleep(0)

    monkeypatch.setattr("generation.tasks.time.sleep", sleep)
    outage.write_text(str(timezone.now().timestamp() + 3600))

    job = _submit(teacher, base_class)

    assert job.status == JobStatus.SUCCEEDED, job.error
    outline = GenerationTask.objects.get(job=job, kind=TaskKind.OUTLINE)
    assert outline.deferrals >= 2
    assert GenerationAttempt.objects.filter(task=outline, outcome="transient").count() >= 4


# --- Reconciler: outbox, lost messages, expired leases --------------------------------------------
def _later(seconds: float = 600) -> Any:
    return timezone.now() + timedelta(seconds=seconds)


def test_it_starts_a_committed_job_whose_publish_was_lost(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)  # crash after commit
    job = _submit(teacher, base_class)
    assert job.status == JobStatus.QUEUED
    monkeypatch.undo()

    report = recovery.reconcile()

    job.refresh_from_db()
    assert report.started_jobs == 1
    assert job.status == JobStatus.SUCCEEDED


def test_it_resends_a_lost_outline_message(teacher: Any, base_class: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(services.dispatch, "_send_outlines", lambda job_ids: None)
    job = _submit(teacher, base_class)
    assert job.status == JobStatus.RUNNING
    monkeypatch.undo()

    assert recovery.reconcile().redispatched_outlines == 0  # not overdue yet
    report = recovery.reconcile(now=_later())

    job.refresh_from_db()
    assert report.redispatched_outlines == 1
    assert job.status == JobStatus.SUCCEEDED


def test_it_finishes_a_job_whose_chord_was_lost_without_recalling_succeeded_tasks(
    teacher: Any, base_class: Any, monkeypatch: Any, settings: Any, tmp_path: Path
) -> None:
    settings.COURSEGEN_OFFLINE_CALL_LOG = str(tmp_path / "calls.log")
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: None)  # every message lost
    job = _submit(teacher, base_class, lessons_per_module=2)
    monkeypatch.undo()
    done = GenerationTask.objects.filter(job=job, kind=TaskKind.METADATA)
    services.task_run(task_id=done.get().pk)  # one task did run before the loss
    calls_before = _calls(tmp_path / "calls.log")
    planned = GenerationTask.objects.filter(job=job).count()

    report = recovery.reconcile(now=_later())

    job.refresh_from_db()
    assert report.redispatched_tasks == planned - 2  # all but the outline and the finished one
    assert report.finalized_jobs == 1
    assert job.status == JobStatus.SUCCEEDED
    assert _calls(tmp_path / "calls.log") == calls_before + planned - 2


def test_it_redispatches_a_task_whose_worker_died(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: None)
    job = _submit(teacher, base_class)
    monkeypatch.undo()
    dead = GenerationTask.objects.filter(job=job, kind=TaskKind.LESSON_SECTION).get()
    assert services.task_claim(task_id=dead.pk, worker="killed-worker")
    GenerationTask.objects.filter(pk=dead.pk).update(lease_expires_at=timezone.now())

    recovery.reconcile(now=_later())

    dead.refresh_from_db()
    assert dead.status == TaskStatus.SUCCEEDED
    assert dead.runs == 2 and dead.worker != "killed-worker"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_it_leaves_healthy_running_jobs_alone(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: None)
    job = _submit(teacher, base_class)
    monkeypatch.undo()
    task = GenerationTask.objects.filter(job=job, kind=TaskKind.LESSON_SECTION).get()
    assert services.task_claim(task_id=task.pk, worker="alive")  # live lease

    report = recovery.reconcile(now=_later(60))  # other tasks not overdue either

    assert report.redispatched_tasks == 0
    task.refresh_from_db()
    assert task.worker == "alive"


# --- Task-level recovery ------------------------------------------------------------------------
def _failed_job(
    teacher: Any, base_class: Any, settings: Any, monkeypatch: Any
) -> CourseGenerationJob:
    """A finished job whose lesson section failed validation every time."""
    from generation.providers import offline

    real = offline.OfflineProvider.complete

    def complete(self: Any, request: Any) -> Any:
        completion = real(self, request)
        if request.task_kind == TaskKind.LESSON_SECTION and settings.BREAK_SECTIONS:
            return type(completion)(**{**completion.__dict__, "data": {"introduction": "short"}})
        return completion

    settings.BREAK_SECTIONS = True
    monkeypatch.setattr(offline.OfflineProvider, "complete", complete)
    job = _submit(teacher, base_class, lessons_per_module=2)
    assert job.status == JobStatus.FAILED
    settings.BREAK_SECTIONS = False
    return job


def test_it_resumes_a_failed_job_over_the_api(
    teacher: Any, base_class: Any, settings: Any, monkeypatch: Any, client_for: Any
) -> None:
    job = _failed_job(teacher, base_class, settings, monkeypatch)
    succeeded_before = set(
        GenerationTask.objects.filter(job=job, status=TaskStatus.SUCCEEDED).values_list(
            "pk", "runs"
        )
    )

    response = client_for(teacher).post(f"/api/jobs/{job.pk}/resume/")

    assert response.status_code == 200
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.course is not None
    for pk, runs in succeeded_before:  # succeeded tasks were not run again
        assert GenerationTask.objects.get(pk=pk).runs == runs
    assert client_for(teacher).post(f"/api/jobs/{job.pk}/resume/").status_code == 409


def test_it_retries_one_failed_task_over_the_api(
    teacher: Any, base_class: Any, settings: Any, monkeypatch: Any, client_for: Any
) -> None:
    job = _failed_job(teacher, base_class, settings, monkeypatch)
    first, second = GenerationTask.objects.filter(job=job, status=TaskStatus.FAILED).order_by("pk")

    response = client_for(teacher).post(f"/api/jobs/{job.pk}/tasks/{first.pk}/retry/")

    assert response.status_code == 200
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == TaskStatus.SUCCEEDED
    assert second.status == TaskStatus.FAILED  # only the named task was retried
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    other = client_for(teacher).post(f"/api/jobs/{job.pk}/tasks/{first.pk}/retry/")
    assert other.status_code == 409


def test_it_hides_recovery_from_other_organisations(
    teacher: Any,
    base_class: Any,
    settings: Any,
    monkeypatch: Any,
    client_for: Any,
    make_member: Any,
) -> None:
    from tests.factories import OrganisationFactory

    job = _failed_job(teacher, base_class, settings, monkeypatch)
    outsider = make_member(org=OrganisationFactory())
    assert client_for(outsider).post(f"/api/jobs/{job.pk}/resume/").status_code == 404


def _admin_request(user: Any) -> Any:
    request = RequestFactory().post("/admin/")
    request.user = user
    request.session = {}  # type: ignore[assignment]
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
    return request


def test_it_resumes_jobs_and_retries_tasks_from_the_admin(
    teacher: Any, base_class: Any, settings: Any, monkeypatch: Any, admin_user: Any
) -> None:
    job = _failed_job(teacher, base_class, settings, monkeypatch)
    failed = GenerationTask.objects.filter(job=job, status=TaskStatus.FAILED)
    one = failed.first()
    assert one is not None

    TaskAdmin(GenerationTask, AdminSite()).retry_tasks(
        _admin_request(admin_user), GenerationTask.objects.filter(pk=one.pk)
    )
    one.refresh_from_db()
    assert one.status == TaskStatus.SUCCEEDED

    JobAdmin(CourseGenerationJob, AdminSite()).resume_jobs(
        _admin_request(admin_user), CourseGenerationJob.objects.filter(pk=job.pk)
    )
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_it_resumes_failed_jobs_from_the_command(
    teacher: Any, base_class: Any, settings: Any, monkeypatch: Any
) -> None:
    job = _failed_job(teacher, base_class, settings, monkeypatch)

    call_command("recover_jobs", "--all-failed")

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    with pytest.raises(Exception, match="could not be resumed"):
        call_command("recover_jobs", "--job", str(job.pk))


def test_it_cancels_pending_tasks_and_frees_the_slot(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: None)
    job = _submit(teacher, base_class)
    monkeypatch.undo()

    services.job_cancel(job_id=job.pk)

    statuses = set(
        GenerationTask.objects.filter(job=job)
        .exclude(kind=TaskKind.OUTLINE)
        .values_list("status", flat=True)
    )
    assert statuses == {TaskStatus.CANCELLED}
    assert QueueEntry.objects.get(job=job).state == QueueState.CANCELLED
    assert services.running_job_count() == 0
    recovery.reconcile(now=_later())  # nothing of a cancelled job is sent again
    assert set(
        GenerationTask.objects.filter(job=job)
        .exclude(kind=TaskKind.OUTLINE)
        .values_list("status", flat=True)
    ) == {TaskStatus.CANCELLED}


# --- Idempotent submission ----------------------------------------------------------------------
BODY = {"topic": "Tides and the moon", **SMALL}


def _post(client: Any, base_class: Any, key: str, **body: Any) -> Any:
    return client.post(
        "/api/jobs/",
        {"base_class": str(base_class.pk), **BODY, **body},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_it_replays_the_first_response_for_the_same_key_and_body(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    client = client_for(teacher)
    first = _post(client, base_class, "key-1")
    again = _post(client, base_class, "key-1")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert CourseGenerationJob.objects.count() == 1


def test_it_answers_422_for_the_same_key_with_another_body(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    client = client_for(teacher)
    _post(client, base_class, "key-2")

    response = _post(client, base_class, "key-2", topic="Something else entirely")

    assert response.status_code == 422
    assert CourseGenerationJob.objects.count() == 1


def test_it_answers_409_while_a_request_with_the_key_is_in_flight(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_submit = services.job_submit

    def slow_submit(**kwargs: Any) -> Any:
        entered.set()
        release.wait(10)
        return real_submit(**kwargs)

    monkeypatch.setattr(services, "job_submit", slow_submit)
    responses: dict[str, Any] = {}

    def post_first() -> None:
        try:
            responses["first"] = _post(client_for(teacher), base_class, "key-3")
        finally:
            connection.close()

    first = threading.Thread(target=post_first)
    first.start()
    assert entered.wait(10)

    second = _post(client_for(teacher), base_class, "key-3")
    release.set()
    first.join(20)

    assert second.status_code == 409
    assert responses["first"].status_code == 201
    assert CourseGenerationJob.objects.count() == 1


def test_a_key_taken_over_by_a_retry_gives_one_job(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    # The first request is slow past ABANDONED_AFTER (moderation, the usage row's lock): a retry
    # takes the key over; when the first one then creates its job, both had a job (found in
    # review). Now the first link fails and the first request's job and admission roll back.
    entered, release = threading.Event(), threading.Event()
    real_submit = services.job_submit
    calls: list[int] = []

    def slow_first(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(10)
        return real_submit(**kwargs)

    monkeypatch.setattr(services, "job_submit", slow_first)
    responses: dict[str, Any] = {}

    def post_first() -> None:
        try:
            responses["first"] = _post(client_for(teacher), base_class, "key-slow")
        finally:
            connection.close()

    first = threading.Thread(target=post_first)
    first.start()
    assert entered.wait(10)
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(minutes=3))

    retry = _post(client_for(teacher), base_class, "key-slow")
    release.set()
    first.join(20)

    assert retry.status_code == 201
    assert responses["first"].status_code == 409
    assert "took it over" in responses["first"].json()["detail"]
    job = CourseGenerationJob.objects.get()  # one job, the retry's
    assert str(job.pk) == retry.json()["id"]
    key = IdempotencyKey.objects.get(key="key-slow")
    assert key.job_id == job.pk and key.response_status == 201
    replay = _post(client_for(teacher), base_class, "key-slow")
    assert replay.status_code == 201 and replay.json()["id"] == retry.json()["id"]


def test_a_resumed_task_starts_a_new_deferral_budget(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    # Deferred through a long outage until its budget ran out, then resumed: the first 503 of
    # its new run failed it at once, the budget counted from the old outage (found in review).
    job = _submit(teacher, base_class)
    outline = job.tasks.get(kind=TaskKind.OUTLINE)
    GenerationTask.objects.filter(pk=outline.pk).update(
        status=TaskStatus.FAILED,
        deferrals=7,
        deferred_since=timezone.now() - timedelta(hours=2),
        redispatches=3,
    )
    CourseGenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)
    monkeypatch.setattr(services, "send_dispatch", lambda: None)  # the job stays queued

    recovery.job_resume(job_id=job.pk, by="staff")

    outline.refresh_from_db()
    assert (outline.status, outline.deferrals, outline.deferred_since, outline.redispatches) == (
        TaskStatus.PENDING,
        0,
        None,
        0,
    )


def test_it_takes_a_key_released_between_its_insert_and_its_read(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    # The request holding the key was refused and released it after this one's INSERT failed
    # and before its read: that read found nothing, a 500 (found in review).
    real_create = IdempotencyKey.objects.create
    inserts: list[str] = []

    def create(**kwargs: Any) -> IdempotencyKey:
        inserts.append(kwargs["key"])
        if len(inserts) == 1:
            raise IntegrityError("duplicate key value violates unique constraint")
        return real_create(**kwargs)

    monkeypatch.setattr(IdempotencyKey.objects, "create", create)

    response = _post(client_for(teacher), base_class, "key-race")

    assert response.status_code == 201 and inserts == ["key-race", "key-race"]
    assert IdempotencyKey.objects.get(key="key-race").job_id == CourseGenerationJob.objects.get().pk


def test_it_forgets_keys_after_they_expire(client_for: Any, teacher: Any, base_class: Any) -> None:
    client = client_for(teacher)
    _post(client, base_class, "key-4")
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = _post(client, base_class, "key-4")

    assert response.status_code == 201
    assert CourseGenerationJob.objects.count() == 2


def test_it_releases_the_key_when_the_request_is_invalid(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    client = client_for(teacher)
    assert _post(client, base_class, "key-5", num_modules=99).status_code == 400
    assert _post(client, base_class, "key-5", num_modules=1).status_code == 201


def test_it_rejects_an_overlong_key(client_for: Any, teacher: Any, base_class: Any) -> None:
    response = _post(client_for(teacher), base_class, "k" * 256)
    assert response.status_code == 400
    assert CourseGenerationJob.objects.count() == 0


def test_it_fails_open_when_the_breaker_store_is_down(monkeypatch: Any) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("redis is restarting")

    monkeypatch.setattr("generation.breaker.cache.get", down)
    monkeypatch.setattr("generation.breaker.cache.add", down)
    breaker = CircuitBreaker("m")

    assert breaker.before_call() is False  # the call may go out
    breaker.record_failure()  # and recording does not raise
    assert breaker.state() == BreakerState.CLOSED
