"""Closing a job once every task has ended: de-duplicate questions across the course, total
tokens and cost, assemble and score the course, free the running slot, record the outcome."""

from __future__ import annotations

import logging
from collections import Counter
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from generation import assembly, evaluation, messages
from generation.leases import db_now_plus
from generation.models import (
    AttemptOutcome,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    JudgeStatus,
    QueueState,
    TaskStatus,
)
from generation.services import alerts, common, dedupe, dispatch, ledger, runs

logger = logging.getLogger("coursegen.generation")


def job_finalize(*, job_id: UUID) -> CourseGenerationJob:
    """Assemble the course and close the job, once every task has ended. Safe to repeat.

    One finalizer at a time (the chord body and the reconciler may both call this): the first
    claims the job's finalize lease; the others return. The question de-duplication pass runs
    under that lease and never takes a succeeded task back to running, so a finalizer killed
    mid-pass leaves nothing for the reconciler to re-run but the finalize itself."""
    worker = f"finalize:{common.worker_name()}"
    run = _finalize_claim(job_id=job_id, worker=worker)
    if run is None:
        return CourseGenerationJob.objects.get(pk=job_id)
    lease = runs.LeaseClock(settings.COURSEGEN_TASK_LEASE_S)

    def holds() -> bool:
        return lease.renewed(_finalize_renew(job_id=job_id, worker=worker, run=run))

    # Assessments ran in parallel: only now can questions be compared across the course.
    found = dedupe.job_dedupe_questions(job_id=job_id, holds=holds)
    job, closed = runs.while_lease_holds(
        lease, lambda: _finalize_close(job_id=job_id, worker=worker, run=run, unique=not found)
    )
    if closed:
        alerts.job_outcome_record(job=job)  # logs the outcome, alerts on failure, checks quality
    return job


def _open_tasks() -> Exists:
    return Exists(
        GenerationTask.objects.filter(
            job=OuterRef("pk"), status__in=[TaskStatus.PENDING, TaskStatus.RUNNING]
        )
    )


# The ORM claim below, written out for PostgreSQL with RETURNING (leases on the database's clock).
_CLAIM = """
UPDATE course_generation_jobs j
SET finalize_worker = %(worker)s, finalize_runs = j.finalize_runs + 1,
    finalize_lease_expires_at = STATEMENT_TIMESTAMP() + make_interval(secs => %(lease_s)s)
WHERE j.id = %(id)s AND j.status = %(running)s
  AND (j.finalize_lease_expires_at IS NULL OR j.finalize_lease_expires_at < STATEMENT_TIMESTAMP())
  AND NOT EXISTS (
      SELECT 1 FROM course_generation_tasks t WHERE t.job_id = j.id AND t.status = ANY(%(open)s)
  )
RETURNING j.finalize_runs
"""


def _finalize_claim(*, job_id: UUID, worker: str) -> int | None:
    """Take the job's finalize lease (on the database's clock); its run number, or None when
    the job is closed, has tasks still open, or another finalizer holds the lease."""
    run = (
        _finalize_claim_postgresql(job_id=job_id, worker=worker)
        if connection.vendor == "postgresql"
        else _finalize_claim_orm(job_id=job_id, worker=worker)
    )
    if run is None:
        logger.info("job %s: not finalized here (closed, tasks open or being finalized)", job_id)
    return run


def _finalize_claim_postgresql(*, job_id: UUID, worker: str) -> int | None:
    """The claim and its run number in one round trip (the ORM's is an update and a select)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM,
            {
                "id": job_id,
                "worker": worker,
                "lease_s": settings.COURSEGEN_TASK_LEASE_S,
                "running": JobStatus.RUNNING,
                "open": [TaskStatus.PENDING, TaskStatus.RUNNING],
            },
        )
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _finalize_claim_orm(*, job_id: UUID, worker: str) -> int | None:
    free = Q(finalize_lease_expires_at__isnull=True) | Q(finalize_lease_expires_at__lt=Now())
    claimed = (
        CourseGenerationJob.objects.filter(free, pk=job_id, status=JobStatus.RUNNING)
        .exclude(_open_tasks())
        .update(
            finalize_worker=worker,
            finalize_runs=F("finalize_runs") + 1,
            finalize_lease_expires_at=db_now_plus(settings.COURSEGEN_TASK_LEASE_S),
        )
    )
    if not claimed:
        return None
    return CourseGenerationJob.objects.values_list("finalize_runs", flat=True).get(pk=job_id)


def _finalize_owned(*, job_id: UUID, worker: str, run: int) -> QuerySet[CourseGenerationJob]:
    return CourseGenerationJob.objects.filter(
        pk=job_id, status=JobStatus.RUNNING, finalize_worker=worker, finalize_runs=run
    )


def _finalize_renew(*, job_id: UUID, worker: str, run: int) -> bool:
    owned = _finalize_owned(job_id=job_id, worker=worker, run=run)
    return bool(
        owned.update(finalize_lease_expires_at=db_now_plus(settings.COURSEGEN_TASK_LEASE_S))
    )


@transaction.atomic
def _finalize_close(
    *, job_id: UUID, worker: str, run: int, unique: bool = False
) -> tuple[CourseGenerationJob, bool]:
    """Close the job if this finalizer still holds it; the job, and whether it closed it.
    `unique`: the de-duplication pass found no near-duplicate question. It compared every
    assessment when every task had succeeded, the only case the course is scored in, and no
    output changes under the finalize lease, so the evaluation need not compare them again."""
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    if job.is_terminal or (job.finalize_worker, job.finalize_runs) != (worker, run):
        return job, False  # closed by another finalizer, or our lease was taken over
    tasks = list(job.tasks.all())
    if any(
        t.status not in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)
        for t in tasks
    ):
        logger.info("job %s: finalize called with tasks still open; leaving it running", job_id)
        job.finalize_lease_expires_at = None
        job.save(update_fields=["finalize_lease_expires_at", "updated_at"])
        return job, False
    ledger.job_totals_apply(job=job, tasks=tasks)
    failed = [t for t in tasks if t.status != TaskStatus.SUCCEEDED]
    if failed:
        job.status = JobStatus.FAILED
        job.error = "; ".join(f"{t.kind} {t.key}: {t.error or t.status}" for t in failed[:10])
    else:
        job.status, job.progress = JobStatus.SUCCEEDED, 100
        job.course = assembly.assemble_course(job=job, tasks=tasks)
        # In this transaction: every course is scored once.
        job_evaluate(job=job, tasks=tasks, unique=unique)
        _judge_request(job=job)
    job.finished_at = timezone.now()
    job.finalize_lease_expires_at = None
    job.save(update_fields=FINALIZED_FIELDS)  # not the request and outline documents again
    dispatch.queue_entry_close(job=job, state=QueueState.DONE)
    # robust: the job is closed; an error here must not make the caller retry the close (beat's
    # dispatcher run starts the next job within seconds anyway). Django logs it.
    transaction.on_commit(dispatch.send_dispatch_if_queued, robust=True)
    return job, True


FINALIZED_FIELDS = [
    "status", "progress", "error", "course", "finished_at", "updated_at",
    "input_tokens", "cached_tokens", "output_tokens", "cost_usd", "reask_cost_usd",
    "quality_score", "finalize_lease_expires_at", "judge_status",
]  # fmt: skip


def _judge_request(*, job: CourseGenerationJob) -> None:
    """Mark the course for the LLM judge and send it after commit (generation/quality/): on its
    own Celery task, so the judge never delays the course. The reconciler re-sends it if lost."""
    if not settings.COURSEGEN_JUDGE_ENABLED:
        return
    job.judge_status = JudgeStatus.PENDING
    judge_job = messages.task(messages.JUDGE_JOB)
    transaction.on_commit(
        lambda: judge_job.apply_async(args=(str(job.id),), priority=messages.judge_priority())
    )


def job_evaluate(
    *, job: CourseGenerationJob, tasks: list[GenerationTask], unique: bool = False
) -> CourseEvaluation | None:
    """Score the job's assembled course and record it; sets `job.quality_score`, which the
    caller saves with the rest of the job. A failing evaluator leaves the course unscored: it
    must not keep a finished course from its owner (nor fail the finalize for ever)."""
    try:
        with transaction.atomic():  # a savepoint: an error here leaves the caller's work intact
            # By the task ids in hand: a join on the job scanned the whole ledger.
            invalid = Counter(
                GenerationAttempt.objects.filter(
                    task_id__in=[t.pk for t in tasks], outcome=AttemptOutcome.INVALID
                ).values_list("task_id", flat=True)
            )
            card = evaluation.evaluate_job(
                job=job, tasks=tasks, invalid_replies=invalid, unique=unique
            )
            record = CourseEvaluation.objects.create(
                job=job,
                evaluator=evaluation.EVALUATOR,
                overall=card.overall,
                criteria=card.criteria,
                feedback=card.feedback,
            )
    except Exception:
        logger.exception("job %s: the evaluation failed; the course stays unscored", job.id)
        job.quality_score = None
        return None
    job.quality_score = card.overall
    return record
