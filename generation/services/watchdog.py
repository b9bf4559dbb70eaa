"""The job-level watchdog: failing a running job that nothing is moving on any more.

`recovery.reconcile` finds such jobs (`selectors.jobs_stuck`: no live task and no progress for
COURSEGEN_JOB_WATCHDOG_S) after its own re-sends had their chance. Failing one closes its open
tasks, totals what was paid, frees its running slot and raises the critical "job failed" alert;
staff can resume it (`POST /api/jobs/{id}/resume/`), which puts its failed tasks back to work.
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from generation.models import CourseGenerationJob, JobStatus, QueueState, TaskStatus
from generation.selectors import jobs_stuck
from generation.services import alerts, dispatch, finalize, ledger
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


def job_fail_stuck(*, job_id: UUID, now: datetime) -> CourseGenerationJob | None:
    """Fail the job if it is still running; None when it closed or moved on meanwhile."""
    with transaction.atomic():
        # The job's row first, as everywhere (docs/resilience.md#claims-and-leases); re-checked
        # under the lock, so a task picked up meanwhile keeps its job alive.
        job = CourseGenerationJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not jobs_stuck(now=now).filter(pk=job_id).exists():
            return None
        reason = (
            f"stopped by the watchdog: no live task and no progress for "
            f"{settings.COURSEGEN_JOB_WATCHDOG_S:.0f}s"
        )
        job.tasks.filter(status__in=[TaskStatus.PENDING, TaskStatus.RUNNING]).update(
            status=TaskStatus.FAILED,
            error=reason,
            lease_expires_at=None,
            worker="",
            finished_at=timezone.now(),
        )
        ledger.job_totals_apply(job=job, tasks=list(job.tasks.all()))
        job.status, job.error, job.finished_at = JobStatus.FAILED, reason, timezone.now()
        job.finalize_lease_expires_at = None
        job.save(update_fields=finalize.FINALIZED_FIELDS)
        dispatch.queue_entry_close(job=job, state=QueueState.DONE)
        transaction.on_commit(dispatch.send_dispatch)
    log_event("job.stuck", f"job {job.id} {reason}", level="error", job=job)
    alerts.job_outcome_record(job=job)  # the critical "job failed" alert
    return job
