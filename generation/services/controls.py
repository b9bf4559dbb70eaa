"""Controls over a job from staff and owners: its priority in the queue, and cancelling it."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction
from django.utils import timezone

from generation.models import (
    CourseGenerationJob,
    JobStatus,
    Priority,
    QueueState,
    TaskStatus,
    Urgency,
)
from generation.services import batchqueue, common, dispatch, ledger
from monitoring.logs import log_event


@transaction.atomic
def job_set_priority(*, job_id: UUID, priority: int) -> None:
    if priority not in Priority.values:
        raise common.GenerationError(f"priority must be one of {Priority.values}")
    # The job's row first, then its queue entry: the one lock order (docs/resilience.md).
    CourseGenerationJob.objects.filter(pk=job_id).update(priority=priority)
    dispatch.queue_entry_reprioritise(job_id=job_id, priority=priority)


@transaction.atomic
def job_set_urgency(*, job_id: UUID, urgency: str) -> None:
    """Staff move a queued job between the live path and the Batch API (docs/batch.md); once
    it runs, its calls are on their way and its urgency stays."""
    if urgency not in Urgency.values:
        raise common.GenerationError(f"urgency must be one of {', '.join(Urgency.values)}")
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    if job.urgency == urgency:
        return
    if job.status != JobStatus.QUEUED:
        raise common.GenerationError(
            f"only a queued job's urgency can change; this one is {job.status}"
        )
    job.urgency = urgency
    job.save(update_fields=["urgency", "updated_at"])
    log_event("job.urgency", f"job {job.id}: urgency {urgency}", job=job)


def job_cancel(*, job_id: UUID, reason: str = "cancelled by user") -> CourseGenerationJob:
    with transaction.atomic():
        job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
        if job.is_terminal:
            raise common.GenerationError(f"the job has already {job.status}")
        job.tasks.filter(status=TaskStatus.PENDING).update(
            status=TaskStatus.CANCELLED, error=reason
        )
        batchqueue.job_batch_requests_cancel(job_id=job.pk, reason=reason)
        job.status, job.error, job.finished_at = JobStatus.CANCELLED, reason, timezone.now()
        # What its runs paid so far; a run still in flight adds its own when it records.
        ledger.job_totals_apply(job=job, tasks=list(job.tasks.all()))
        job.save(update_fields=["status", "error", "finished_at", "updated_at", *ledger.JOB_TOTALS])
        dispatch.queue_entry_close(job=job, state=QueueState.CANCELLED)
        transaction.on_commit(dispatch.send_dispatch)
    log_event("job.cancelled", f"job {job.id} cancelled: {reason}", level="warning", job=job)
    return job
