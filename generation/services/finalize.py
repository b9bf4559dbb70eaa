"""Closing a job once every task has ended: de-duplicate questions across the course, total
tokens and cost, assemble and score the course, free the running slot, record the outcome."""

from __future__ import annotations

import logging
from collections import Counter
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from generation import assembly, evaluation
from generation.models import (
    AttemptOutcome,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    QueueState,
    TaskStatus,
)
from generation.services import alerts, dedupe, dispatch, ledger

logger = logging.getLogger("coursegen.generation")


def job_finalize(*, job_id: UUID) -> CourseGenerationJob:
    """Assemble the course and close the job, once every task has ended. Safe to repeat."""
    # Assessments ran in parallel: only now can questions be compared across the course.
    dedupe.job_dedupe_questions(job_id=job_id)
    with transaction.atomic():
        job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
        if job.is_terminal:
            return job
        tasks = list(job.tasks.all())
        if any(
            t.status not in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)
            for t in tasks
        ):
            logger.info("job %s: finalize called with tasks still open; leaving it running", job_id)
            return job
        ledger.job_totals_apply(job=job, tasks=tasks)
        failed = [t for t in tasks if t.status != TaskStatus.SUCCEEDED]
        if failed:
            job.status = JobStatus.FAILED
            job.error = "; ".join(f"{t.kind} {t.key}: {t.error or t.status}" for t in failed[:10])
        else:
            job.status, job.progress = JobStatus.SUCCEEDED, 100
            job.course = assembly.assemble_course(job=job, tasks=tasks)
            job_evaluate(job=job, tasks=tasks)  # in this transaction: every course is scored
        job.finished_at = timezone.now()
        job.save(update_fields=FINALIZED_FIELDS)  # not the request and outline documents again
        dispatch.queue_entry_close(job=job, state=QueueState.DONE)
        transaction.on_commit(dispatch.send_dispatch)
    alerts.job_outcome_record(job=job)  # logs the outcome, alerts on failure, checks quality
    return job


FINALIZED_FIELDS = [
    "status", "progress", "error", "course", "finished_at", "updated_at",
    "input_tokens", "cached_tokens", "output_tokens", "cost_usd", "reask_cost_usd",
    "quality_score",
]  # fmt: skip


def job_evaluate(
    *, job: CourseGenerationJob, tasks: list[GenerationTask]
) -> CourseEvaluation | None:
    """Score the job's assembled course and record it; sets `job.quality_score`, which the
    caller saves with the rest of the job. A failing evaluator leaves the course unscored: it
    must not keep a finished course from its owner (nor fail the finalize for ever)."""
    try:
        with transaction.atomic():  # a savepoint: an error here leaves the caller's work intact
            invalid = Counter(
                GenerationAttempt.objects.filter(
                    task__job=job, outcome=AttemptOutcome.INVALID
                ).values_list("task_id", flat=True)
            )
            card = evaluation.evaluate_job(job=job, tasks=tasks, invalid_replies=invalid)
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
