"""What production does to the pipeline (issue 20): clocks that disagree, leases taken over by a
worker of the same name, database blips while a paid result is recorded, long provider outages.
Each test here failed before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from generation import recovery, regeneration, services, tasks
from generation.breaker import CircuitBreaker
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    TaskStatus,
)
from generation.providers.base import Completion, CompletionRequest, Provider
from generation.providers.offline import OfflineProvider
from generation.schemas import CourseRequest, TaskKind
from generation.services import dedupe
from tests import worker
from tests.courses import DuplicatingProvider, finished_job

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def _planned_job(user: Any, base_class: Any, monkeypatch: Any) -> CourseGenerationJob:
    """A running 1x1 job whose outline ran and whose tasks are planned, but no chord was sent."""
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: None)
    request = CourseRequest(topic="Tides and the moon", num_modules=1, lessons_per_module=1)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    monkeypatch.undo()
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.chord_dispatched_at is not None
    return job


class HookProvider(Provider):
    """The offline simulator, running `hook` inside the first call (the call is in flight)."""

    name = "hook"

    def __init__(self, hook: Callable[[], None]) -> None:
        self.inner, self.hook, self.calls = OfflineProvider(), hook, 0

    def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        if self.calls == 1:
            self.hook()
        return self.inner.complete(request)


def _expire_lease(task: GenerationTask) -> None:
    GenerationTask.objects.filter(pk=task.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def _ledger_cost(job: CourseGenerationJob) -> Decimal:
    total = GenerationAttempt.objects.filter(task__job=job).aggregate(s=Sum("cost_usd"))["s"]
    return Decimal(total or 0).quantize(Decimal("0.000001"))


# --- 9: leases on the database's clock, fencing with the run number, a lost run's cost ---------
def test_it_compares_leases_on_the_database_clock_not_the_hosts(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)
    assert services.task_claim(task_id=task.pk, worker="alive")
    # A host whose clock runs an hour ahead sees every lease as expired
    ahead = timezone.now() + timedelta(hours=1)
    monkeypatch.setattr("django.utils.timezone.now", lambda: ahead)

    assert not services.task_claim(task_id=task.pk, worker="skewed")
    assert services.task_run(task_id=task.pk, worker="skewed").ran is False
    assert recovery.reconcile().redispatched_tasks == 0

    task.refresh_from_db()
    assert (task.status, task.worker, task.runs) == (TaskStatus.RUNNING, "alive", 1)


def test_it_refuses_a_stale_runs_result_even_from_a_worker_of_the_same_name(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)

    def taken_over() -> None:  # the lease runs out mid-call; the same worker name claims again
        _expire_lease(task)
        assert services.task_claim(task_id=task.pk, worker="w")

    services.task_run(task_id=task.pk, worker="w", provider=HookProvider(taken_over))

    task.refresh_from_db()
    assert (task.status, task.runs, task.output) == (TaskStatus.RUNNING, 2, None)
    # the stale run's call is still paid for (with its free moderation call)
    assert task.attempts == 2 and task.cost_usd > 0


def test_it_puts_the_cost_of_a_run_that_lost_its_lease_into_the_jobs_totals(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    victim = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)
    for other in GenerationTask.objects.filter(job=job, status=TaskStatus.PENDING).exclude(
        pk=victim.pk
    ):
        services.task_run(task_id=other.pk)

    def finished_elsewhere() -> None:  # another worker takes over, and the job is finalized
        _expire_lease(victim)
        assert services.task_run(task_id=victim.pk, worker="other").status == "succeeded"
        assert services.job_finalize(job_id=job.pk).status == JobStatus.SUCCEEDED

    services.task_run(task_id=victim.pk, worker="slow", provider=HookProvider(finished_elsewhere))

    job.refresh_from_db()
    victim.refresh_from_db()
    # two runs, each a generation call and its moderation (cost 0), all in the ledger
    assert victim.attempts == 4 == GenerationAttempt.objects.filter(task=victim).count()
    assert GenerationAttempt.objects.filter(task=victim).exclude(kind="moderation").count() == 2
    assert job.cost_usd == _ledger_cost(job) > 0


def test_a_database_error_after_a_lost_lease_is_recorded_does_not_count_the_run_twice(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    """The record of a run that lost its lease is retried whole through a database error (the
    re-total of the closed job here): its usage and ledger rows must go in once, not once per
    try (a review found them doubled when the record committed before its follow-up)."""
    job = _planned_job(teacher, base_class, monkeypatch)
    victim = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)
    for other in GenerationTask.objects.filter(job=job, status=TaskStatus.PENDING).exclude(
        pk=victim.pk
    ):
        services.task_run(task_id=other.pk)

    def finished_elsewhere() -> None:
        _expire_lease(victim)
        assert services.task_run(task_id=victim.pk, worker="other").status == "succeeded"
        assert services.job_finalize(job_id=job.pk).status == JobStatus.SUCCEEDED

    from django.db import OperationalError

    from generation.services import ledger

    refresh = ledger.job_totals_refresh_if_closed
    failures = [OperationalError("server closed the connection unexpectedly")]

    def refresh_once_failing(*, job_id: Any) -> None:
        refresh(job_id=job_id)
        if failures:
            raise failures.pop()

    monkeypatch.setattr(ledger, "job_totals_refresh_if_closed", refresh_once_failing)
    services.task_run(task_id=victim.pk, worker="slow", provider=HookProvider(finished_elsewhere))

    assert not failures  # the error happened, and the record was tried again
    job.refresh_from_db()
    victim.refresh_from_db()
    assert victim.attempts == 4 == GenerationAttempt.objects.filter(task=victim).count()
    assert job.cost_usd == _ledger_cost(job) > 0


def test_the_deadline_comes_before_prefork_s_soft_time_limit() -> None:
    clean = {k: v for k, v in os.environ.items() if k != "COURSEGEN_TASK_DEADLINE_S"}

    def settings_with(**env: str) -> subprocess.CompletedProcess[str]:
        code = "from coursegen import settings as s; print(s.COURSEGEN_TASK_DEADLINE_S)"
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**clean, "CELERY_TASK_SOFT_TIME_LIMIT": "300", **env},
            capture_output=True,
            text=True,
        )

    # By default the deadline path fires first (it coincided with the soft limit: never did).
    assert float(settings_with().stdout) < 300
    # One that would coincide with the soft limit (or come after it) is refused at start-up.
    refused = settings_with(COURSEGEN_TASK_DEADLINE_S="300")
    assert refused.returncode != 0 and "COURSEGEN_TASK_DEADLINE_S" in refused.stderr


def test_a_call_cut_short_by_the_soft_time_limit_defers_the_task_instead_of_failing_it(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)

    def soft_time_limit() -> None:  # prefork's signal handler raises inside the call
        raise SoftTimeLimitExceeded()

    result = services.task_run(task_id=task.pk, provider=HookProvider(soft_time_limit))

    task.refresh_from_db()
    assert result.retry_in is not None and task.status == TaskStatus.PENDING
    assert task.error == "soft time limit reached"


# --- 3: a database blip while recording a paid result ------------------------------------------
def test_it_keeps_a_paid_result_through_a_database_blip_while_recording(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)

    def database_blip() -> None:  # our connection is cut while the provider answers
        backend = connection.connection.info.backend_pid
        with psycopg.connect(
            worker.test_database_url().replace("postgres://", "postgresql://")
        ) as c:
            c.execute("SELECT pg_terminate_backend(%s)", [backend])

    provider = HookProvider(database_blip)
    result = services.task_run(task_id=task.pk, provider=provider)

    task.refresh_from_db()
    assert result.status == TaskStatus.SUCCEEDED == task.status
    # one paid call, and its moderation (which renews no lease, so the blip cannot stop it)
    assert provider.calls == 1 and task.attempts == 2 and task.output is not None


# --- 4: deferrals budgeted by time --------------------------------------------------------------
def test_it_waits_out_a_long_outage_and_gives_up_only_after_the_time_budget(
    teacher: Any, base_class: Any, monkeypatch: Any, settings: Any
) -> None:
    settings.COURSEGEN_BREAKER_MIN_CALLS = 1
    settings.COURSEGEN_BREAKER_OPEN_S = 600
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.METADATA)
    CircuitBreaker(settings.COURSEGEN_MODEL_SIMPLE).record_failure()  # the provider is down

    delays = [services.task_run(task_id=task.pk).retry_in for _ in range(40)]

    task.refresh_from_db()
    assert (task.status, task.deferrals) == (TaskStatus.PENDING, 40)  # 40 tries: still waiting
    assert all(d is not None and 0 < d <= settings.COURSEGEN_TASK_DEFER_MAX_S for d in delays)
    # Once the outage has lasted longer than the budget, the task fails and says why
    budget = settings.COURSEGEN_TASK_DEFER_BUDGET_S
    assert budget >= 30 * 60
    GenerationTask.objects.filter(pk=task.pk).update(
        deferred_since=timezone.now() - timedelta(seconds=budget + 1)
    )

    result = services.task_run(task_id=task.pk)

    task.refresh_from_db()
    assert result.retry_in is None and task.status == TaskStatus.FAILED
    assert "deferral budget" in task.error


# --- 1: a regeneration is a request with an id, resumed after a kill, run once -----------------
class Killed(BaseException):
    """kill -9 of the worker: nothing after this point runs in that process."""


@pytest.fixture
def short_leases(settings: Any) -> Any:
    """Leases of two seconds, and a reconciler that re-sends after one: a killed worker's
    work is found by waiting for its lease to run out for real (on the database's clock)."""
    settings.COURSEGEN_TASK_LEASE_S = 2
    settings.COURSEGEN_REDISPATCH_AFTER_S = 1
    settings.COURSEGEN_FINALIZE_GRACE_S = 0
    return settings


def _after_the_lease() -> None:
    time.sleep(2.5)


def test_it_regenerates_a_task_whose_regeneration_worker_was_killed(
    teacher: Any, base_class: Any, monkeypatch: Any, short_leases: Any, admin_client: Any
) -> None:
    job = finished_job(teacher, base_class)
    task = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l1")
    old_output = task.output

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    monkeypatch.setattr("generation.regeneration.generate", killed)
    with pytest.raises(Killed):
        regeneration.task_regenerate_enqueue(task_id=task.pk, instruction="simpler", by=teacher)
    monkeypatch.undo()
    page = admin_client.get("/admin/generation/regenerationrequest/").content.decode()
    assert 'class="field-status">Running<' in page  # staff see it, and its worker and lease

    _after_the_lease()  # the worker is gone
    recovery.reconcile()

    task.refresh_from_db()
    job.refresh_from_db()
    assert task.status == TaskStatus.SUCCEEDED and task.output != old_output
    assert list(task.versions.values_list("number", "instruction")) == [(1, ""), (2, "simpler")]
    assert job.course is not None
    assert job.course["modules"][0]["lessons"][0]["section"] == task.output


def test_it_runs_a_regeneration_message_delivered_twice_only_once(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = finished_job(teacher, base_class)
    task = job.tasks.get(kind=TaskKind.BRAIN_BYTES, key="m1.l2")
    sent: list[dict[str, Any]] = []
    real_send = tasks.regenerate_task.apply_async

    def send(*args: Any, **kwargs: Any) -> Any:
        sent.append({"args": kwargs.get("args", args[0] if args else ()), **kwargs})
        return real_send(*args, **kwargs)

    monkeypatch.setattr(tasks.regenerate_task, "apply_async", send)
    regeneration.task_regenerate_enqueue(task_id=task.pk, instruction="", by=teacher)
    assert len(sent) == 1

    tasks.regenerate_task.apply(args=sent[0]["args"], kwargs=sent[0].get("kwargs"))  # again

    assert list(task.versions.values_list("number", flat=True)) == [1, 2]
    generation_calls = GenerationAttempt.objects.filter(task=task).exclude(kind="moderation")
    assert generation_calls.count() == 2  # the first run and one more


# --- 2: finalize's duplicate-question pass ------------------------------------------------------
def _duplicating(monkeypatch: Any) -> DuplicatingProvider:
    provider = DuplicatingProvider()
    for module in ("services.runs", "services.dedupe", "regeneration"):
        monkeypatch.setattr(f"generation.{module}.get_provider", lambda: provider)
    return provider


def test_it_never_regenerates_a_whole_succeeded_task_after_a_finalize_was_killed(
    teacher: Any, base_class: Any, monkeypatch: Any, short_leases: Any
) -> None:
    provider = _duplicating(monkeypatch)

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    with monkeypatch.context() as m:  # the chord body's worker dies replacing the question
        m.setattr("generation.services.dedupe.regenerate_part", killed)
        with pytest.raises(Killed):
            finished_job(teacher, base_class)
    job = CourseGenerationJob.objects.get()
    whole_before = len([r for r in provider.requests if not r.context.get("part")])

    _after_the_lease()
    recovery.reconcile()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert len([r for r in provider.requests if not r.context.get("part")]) == whole_before
    assert [r.context["part"] for r in provider.requests if r.context.get("part")] == [
        "questions.0"
    ]
    second = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l2")
    assert second.runs == 1 and second.output is not None
    assert second.output["questions"][0]["stem"] != provider.first_stem


def test_it_replaces_a_duplicate_question_once_when_two_finalizers_race(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    provider = _duplicating(monkeypatch)
    monkeypatch.setattr(services.planning, "_send_chord", lambda *args: None)
    job = services.job_submit(
        user=teacher,
        base_class=base_class,
        request=CourseRequest(topic="Rivers and valleys", num_modules=1, lessons_per_module=2),
    )
    for task in GenerationTask.objects.filter(job=job, status=TaskStatus.PENDING):
        services.task_run(task_id=task.pk)
    # The chord body and the reconciler both finalize: the second has read the duplicates
    # before the first replaced the question, and goes on after the first has finished.
    real_duplicates = dedupe.course_duplicates
    second_read, first_done = threading.Event(), threading.Event()
    readers: list[int] = []

    def course_duplicates(*args: Any, **kwargs: Any) -> Any:
        found = real_duplicates(*args, **kwargs)
        readers.append(threading.get_ident())
        if len(readers) == 1:
            second_read.wait(3)
        else:
            second_read.set()
            first_done.wait(10)
        return found

    monkeypatch.setattr(dedupe, "course_duplicates", course_duplicates)

    def finalize(then: threading.Event) -> None:
        try:
            services.job_finalize(job_id=job.pk)
        finally:
            then.set()
            connection.close()

    first = threading.Thread(target=finalize, args=(first_done,))
    first.start()
    while not readers and first.is_alive():
        time.sleep(0.01)
    second = threading.Thread(target=finalize, args=(second_read,))
    second.start()
    first.join(20)
    second.join(20)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert len([r for r in provider.requests if r.context.get("part")]) == 1
    assert GenerationAttempt.objects.filter(task__job=job, kind="part").count() == 1


# --- make chaos's cancel storm: a cancelled job's cost, a cancel during its outline --------------
def test_it_totals_a_cancelled_jobs_cost_with_a_run_that_records_after_the_cancel(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)

    def cancelled_meanwhile() -> None:  # the owner cancels while the call is on its way
        services.job_cancel(job_id=job.pk)

    services.task_run(task_id=task.pk, provider=HookProvider(cancelled_meanwhile))

    job.refresh_from_db()
    task.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and task.status == TaskStatus.SUCCEEDED
    # the outline's cost (totalled at the cancel) and the paid run that recorded after it
    assert job.cost_usd == _ledger_cost(job) > task.cost_usd > 0


def test_it_totals_a_cancelled_jobs_cost_with_a_run_deferred_after_the_cancel(
    teacher: Any, base_class: Any, monkeypatch: Any, settings: Any
) -> None:
    job = _planned_job(teacher, base_class, monkeypatch)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION)
    settings.COURSEGEN_TASK_DEADLINE_S = 0.5

    def cancelled_meanwhile() -> None:  # and the call outlives the task's deadline
        services.job_cancel(job_id=job.pk)
        time.sleep(0.6)

    result = services.task_run(task_id=task.pk, provider=HookProvider(cancelled_meanwhile))

    job.refresh_from_db()
    task.refresh_from_db()
    # the paid generation call went into the ledger and the task's counters, then the
    # moderation call met the deadline: deferred, after the cancel
    assert result.retry_in is not None and task.status == TaskStatus.PENDING
    assert job.status == JobStatus.CANCELLED
    assert job.cost_usd == _ledger_cost(job) > 0 and task.cost_usd > 0


def test_it_plans_no_tasks_for_a_job_cancelled_while_its_outline_ran(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    request = CourseRequest(topic="Tides and the moon", num_modules=1, lessons_per_module=1)
    # The outline's message is not run at once here: it runs below, as a worker would run it.
    monkeypatch.setattr(services.dispatch, "_send_outlines", lambda priorities: None)
    job = services.job_submit(user=teacher, base_class=base_class, request=request)

    def cancelled_meanwhile() -> None:
        services.job_cancel(job_id=job.pk)

    services.job_run_outline(job_id=job.pk, provider=HookProvider(cancelled_meanwhile))

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    # nothing left pending in a cancelled job (no message would ever run it), its cost totalled
    assert list(job.tasks.values_list("kind", "status")) == [("outline", TaskStatus.SUCCEEDED)]
    assert job.cost_usd == _ledger_cost(job) > 0
