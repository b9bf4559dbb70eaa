"""Judge runs and regenerations by batch (docs/batch.md#judge-runs-and-regenerations): their
lines go through the same request rows and poller as a batch job's tasks, each answer is taken
once by its run (woken by the poller, fenced by the run's lease), paid at the batch price, and a
failed line goes to the next batch or live; a closed regeneration's answer is never applied."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from generation import recovery, regeneration, services
from generation.batch_admin import job_batch_state
from generation.batch_models import BatchRequestStatus, BatchStatus
from generation.batch_selectors import job_batch_saving
from generation.models import (
    AttemptKind,
    BatchRequest,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    JudgeRun,
    JudgeRunStatus,
    JudgeStatus,
    Priority,
    ProviderBatch,
    RegenerationRequest,
    RegenerationSource,
    RegenerationStatus,
)
from generation.pricing import cost_of
from generation.providers import Usage, get_provider
from generation.quality import judge, judging
from generation.schemas import CourseRequest, TaskKind
from generation.services import batches

pytestmark = pytest.mark.django_db(transaction=True)

REQUEST = CourseRequest(topic="Tides and the moon", num_modules=1, lessons_per_module=2)


@pytest.fixture(autouse=True)
def batch_settings(settings: Any, tmp_path: Any) -> Any:
    settings.COURSEGEN_OFFLINE_BATCH_DIR = str(tmp_path / "batches")
    settings.COURSEGEN_OFFLINE_BATCH_DELAY_S = 0.0
    settings.COURSEGEN_CACHE_ENABLED = False
    settings.COURSEGEN_BATCH_JUDGE = "all"
    settings.COURSEGEN_JUDGE_REGENERATE = False
    return settings


def _course(user: Any, base_class: Any) -> CourseGenerationJob:
    """A live (eager) course: done on return; its judge waits for a batch."""
    job = services.job_submit(user=user, base_class=base_class, request=REQUEST)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def _poll_until(done: Any, rounds: int = 12) -> None:
    for _ in range(rounds):
        services.batch_poll()
        if done():
            return
    raise AssertionError("not done after the polls")


def _judged(job: CourseGenerationJob) -> bool:
    job.refresh_from_db()
    return job.judge_status == JudgeStatus.DONE


def _half_price(row: GenerationAttempt) -> bool:
    usage = Usage(row.input_tokens, row.cached_tokens, row.output_tokens)
    return row.cost_usd == cost_of(usage, row.model, batch=True) and row.cost_usd * 2 == (
        cost_of(usage, row.model)
    )


def _ledger(job: CourseGenerationJob) -> list[tuple[Any, ...]]:
    rows = GenerationAttempt.objects.filter(judge_run__job=job) | GenerationAttempt.objects.filter(
        task__job=job
    )
    return sorted(rows.values_list("pk", "kind", "cost_usd", "batch"))


def test_it_judges_by_batch_at_half_price_and_takes_each_verdict_once(
    teacher: Any, base_class: Any
) -> None:
    job = _course(teacher, base_class)
    runs = list(JudgeRun.objects.filter(job=job))
    assert job.judge_status == JudgeStatus.RUNNING and len(runs) == 2
    assert {r.status for r in runs} == {JudgeRunStatus.PENDING}  # given back, waiting
    lines = BatchRequest.objects.filter(judge_run__job=job)
    assert sorted(lines.values_list("custom_id", "status")) == sorted(
        (f"judge-{r.pk}-try-1", BatchRequestStatus.QUEUED) for r in runs
    )
    assert not GenerationAttempt.objects.filter(judge_run__job=job).exists()  # nothing paid yet
    assert "waiting for batch</strong>: 2 request(s) (0 of tasks, 2 of the judge" in (
        job_batch_state(job)
    )  # the job's admin page

    _poll_until(lambda: _judged(job))
    assert job_batch_state(job) == "-"

    rows = list(GenerationAttempt.objects.filter(judge_run__job=job))
    assert len(rows) == 2  # one line per run, no live call
    assert all(r.batch and r.kind == AttemptKind.BATCH and _half_price(r) for r in rows)
    paid = sum((r.cost_usd for r in rows), Decimal(0))
    assert paid > 0 and abs(job.judge_cost_usd - paid) < Decimal("0.000001")  # the job's rounding
    assert job_batch_saving(job_id=job.pk) == paid  # half price: saved as much as was paid
    assert set(lines.values_list("status", flat=True)) == {BatchRequestStatus.APPLIED}
    lessons = CourseEvaluation.objects.filter(job=job, task__isnull=False)
    assert lessons.count() == 2 and job.judge_score is not None
    ledger, evaluations = _ledger(job), lessons.count()

    # Repeated and late deliveries: every message again, a poll, a reconcile.
    for run in runs:
        judging.judge_run_execute(run_id=run.pk)
    services.batch_poll()
    recovery.reconcile()

    assert _ledger(job) == ledger
    assert lessons.count() == evaluations


def test_the_judge_stays_live_when_the_setting_is_off(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_BATCH_JUDGE = "batch"  # only for courses made by batch
    job = _course(teacher, base_class)

    assert job.judge_status == JudgeStatus.DONE
    assert not BatchRequest.objects.exists()
    kinds = GenerationAttempt.objects.filter(judge_run__job=job).values_list("kind", "batch")
    assert set(kinds) == {(AttemptKind.JUDGE, False)}


def test_a_verdict_taken_by_a_run_is_not_taken_again_by_a_run_that_lost_its_lease(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _course(teacher, base_class)
    monkeypatch.setattr(batches, "_send_wake", lambda *ids: None)  # the wake-up is lost
    services.batch_poll()
    run = JudgeRun.objects.filter(job=job).first()
    assert run is not None
    line = BatchRequest.objects.get(judge_run=run)
    assert line.status == BatchRequestStatus.ANSWERED

    # A worker claims the run, reads the answer, and stalls past its lease before recording.
    stalled = judging._claim(run_id=run.pk, worker="stalled")
    assert stalled is not None
    lesson = judge.JudgedLesson.from_course(job.course or {}, run.lesson_key)
    outcome = judge.judge_lesson(lesson, provider=get_provider(), batch=services.owner_replay(line))
    JudgeRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    recovery.reconcile()  # the run is sent again: a new claim takes the answer and records it
    run.refresh_from_db()
    assert run.status == JudgeRunStatus.SUCCEEDED

    recorded = judging._record_round(stalled, "stalled", outcome, number=1, line_id=line.pk)

    assert recorded is False
    rows = GenerationAttempt.objects.filter(judge_run=run)
    assert list(rows.values_list("kind", "batch")) == [(AttemptKind.BATCH, True)]
    assert CourseEvaluation.objects.filter(job=job, details__run=run.pk).count() == 1
    job.refresh_from_db()
    paid = GenerationAttempt.objects.filter(judge_run__job=job).values_list("cost_usd", flat=True)
    assert abs(job.judge_cost_usd - sum(paid, Decimal(0))) < Decimal("0.000001")


def test_failed_judge_lines_go_to_the_next_batch_then_live_each_paid_once(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_OFFLINE_BATCH_FAILED = 1.0  # every line fails (a 500 line)
    batch_settings.COURSEGEN_BATCH_RETRY = "batch"
    batch_settings.COURSEGEN_BATCH_MAX_TRIES = 2
    job = _course(teacher, base_class)

    _poll_until(lambda: _judged(job))

    for run in JudgeRun.objects.filter(job=job):
        lines = BatchRequest.objects.filter(judge_run=run).order_by("number")
        assert [(r.status, r.live) for r in lines] == [
            (BatchRequestStatus.RETRIED, False),
            (BatchRequestStatus.RETRIED, False),
            (BatchRequestStatus.APPLIED, True),  # after its tries: live
        ]
        rows = GenerationAttempt.objects.filter(judge_run=run)
        assert list(rows.values_list("kind", "batch")) == [(AttemptKind.JUDGE, False)]
    assert job.judge_score is not None


def _regenerated(request: RegenerationRequest) -> bool:
    request.refresh_from_db()
    return request.status not in (RegenerationStatus.PENDING, RegenerationStatus.RUNNING)


def test_a_low_priority_regeneration_goes_by_batch_and_makes_its_version_once(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_BATCH_JUDGE = "off"
    batch_settings.COURSEGEN_BATCH_REGENERATIONS = "low"
    job = _course(teacher, base_class)
    CourseGenerationJob.objects.filter(pk=job.pk).update(priority=Priority.LOW)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION, key="m1.l1")
    paid_before = set(GenerationAttempt.objects.filter(task=task).values_list("pk", flat=True))

    request = regeneration.regeneration_request_create(
        task_id=task.pk, by=teacher, source=RegenerationSource.API, instruction="Shorter."
    )  # its message runs now (eager): it queues its line and waits

    request.refresh_from_db()
    assert request.status == RegenerationStatus.PENDING
    line = BatchRequest.objects.get(regeneration=request)
    assert (line.custom_id, line.status) == (f"regen-{request.pk}-try-1", "queued")
    assert regeneration.regeneration_run(request_id=request.pk).batch  # a repeat: still waiting
    assert BatchRequest.objects.filter(regeneration=request).count() == 1

    _poll_until(lambda: _regenerated(request))

    assert request.status == RegenerationStatus.SUCCEEDED
    task.refresh_from_db()
    versions = list(task.versions.order_by("number"))
    assert [v.number for v in versions] == [1, 2]
    assert task.output == versions[1].output != versions[0].output
    new = GenerationAttempt.objects.filter(task=task).exclude(pk__in=paid_before)
    paid = [r for r in new if r.kind != AttemptKind.MODERATION]
    assert len(paid) == 1 and paid[0].batch and _half_price(paid[0])
    assert job_batch_saving(job_id=job.pk) == paid[0].cost_usd
    ledger = _ledger(job)

    assert not regeneration.regeneration_run(request_id=request.pk).ran  # a repeated message
    services.batch_poll()
    recovery.reconcile()

    assert task.versions.count() == 2
    assert _ledger(job) == ledger
    assert BatchRequest.objects.get(regeneration=request).status == BatchRequestStatus.APPLIED


def test_a_person_s_regeneration_of_a_normal_course_stays_live(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_BATCH_JUDGE = "off"
    batch_settings.COURSEGEN_BATCH_REGENERATIONS = "low"
    job = _course(teacher, base_class)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.LESSON_SECTION, key="m1.l1")

    request = regeneration.regeneration_request_create(
        task_id=task.pk, by=teacher, source=RegenerationSource.API
    )

    request.refresh_from_db()
    assert request.status == RegenerationStatus.SUCCEEDED
    assert not BatchRequest.objects.exists()


def test_the_judge_s_regenerations_by_batch_then_its_second_verdict(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_BATCH_REGENERATIONS = "judge"
    batch_settings.COURSEGEN_JUDGE_REGENERATE = True
    batch_settings.COURSEGEN_JUDGE_MIN_OVERALL = 0.99  # every lesson below: regenerate, re-judge
    job = _course(teacher, base_class)

    _poll_until(lambda: _judged(job), rounds=20)

    requests = RegenerationRequest.objects.filter(task__job=job, source=RegenerationSource.JUDGE)
    assert requests.exists()
    for request in requests:
        assert request.status == RegenerationStatus.SUCCEEDED
        assert list(request.batch_requests.values_list("status", flat=True)) == ["applied"]
        assert list(request.task.versions.values_list("number", flat=True)) == [1, 2]
        paid = request.task.attempt_rows.exclude(kind=AttemptKind.MODERATION).filter(batch=True)
        assert paid.count() == 1 and _half_price(paid[0])
    for run in JudgeRun.objects.filter(job=job):
        assert run.status == JudgeRunStatus.SUCCEEDED and run.rounds == 2 and run.regenerated
        verdicts = GenerationAttempt.objects.filter(judge_run=run)
        assert list(verdicts.values_list("kind", "batch")) == [(AttemptKind.BATCH, True)] * 2
    assert set(BatchRequest.objects.values_list("status", flat=True)) == {"applied"}


def test_a_closed_regeneration_s_answer_is_not_applied_and_its_batch_is_cancelled(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_BATCH_JUDGE = "off"
    batch_settings.COURSEGEN_BATCH_REGENERATIONS = "low"
    batch_settings.COURSEGEN_OFFLINE_BATCH_DELAY_S = 3600.0  # the batch stays in progress
    job = _course(teacher, base_class)
    CourseGenerationJob.objects.filter(pk=job.pk).update(priority=Priority.LOW)
    task = GenerationTask.objects.get(job=job, kind=TaskKind.ASSESSMENT, key="m1.l2")
    request = regeneration.regeneration_request_create(
        task_id=task.pk, by=teacher, source=RegenerationSource.API
    )
    services.batch_poll()
    batch = ProviderBatch.objects.get()
    assert batch.provider_status == "in_progress"
    paid = _ledger(job)

    RegenerationRequest.objects.filter(pk=request.pk).update(
        status=RegenerationStatus.FAILED, error="closed by staff"
    )
    services.batch_poll()
    services.batch_poll()

    batch.refresh_from_db()
    assert (batch.status, batch.provider_status) == (BatchStatus.ENDED, "cancelled")
    line = BatchRequest.objects.get(regeneration=request)
    assert line.status == BatchRequestStatus.CANCELLED
    assert list(task.versions.values_list("number", flat=True)) == [1]  # kept, none made
    assert _ledger(job) == paid
