"""Convergence from the rows, whatever happened to the messages; and staff-driven recovery.

`reconcile` runs on celery beat. Celery with Redis may lose a message (a worker killed mid-task, a
Redis restart, a crash between a commit and its publish) or a chord body may never fire. The rows
say what is missing, so the reconciler re-sends exactly that: tasks whose lease expired, pending
tasks whose message is overdue, outlines that never ran, and jobs whose tasks all ended but that
were never finalized. Succeeded tasks are never sent again. The queue table doubles as the outbox:
a job committed but never published is still `queued` there and the dispatcher starts it.

An overdue message may only be waiting in a saturated broker: each re-send since a worker last
picked the task up (a claim resets `redispatches`) doubles the wait before the next, up to
COURSEGEN_REDISPATCH_MAX_S, and goes at the job's aged priority, so a late task overtakes newer
work instead of multiplying the broker's depth. A job with no live task and no progress for
COURSEGEN_JOB_WATCHDOG_S is failed with an alert (the watchdog). Every step, and every job it
finalizes, is on its own: one that raises is logged and counted in `errors`, the rest still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q, QuerySet

from generation import messages, regeneration, services
from generation.batch_models import BATCH_REQUEST_OPEN
from generation.leases import db_now
from generation.models import (
    CourseGenerationJob,
    GenerationTask,
    IdempotencyKey,
    JobStatus,
    QueueEntry,
    QueueState,
    RegenerationRequest,
    RegenerationStatus,
    TaskStatus,
)
from generation.quality import judging
from generation.queueing import aged_broker_priority
from generation.schemas import TaskKind
from generation.selectors import jobs_stuck
from ratelimits.models import AdmissionKind
from ratelimits.selectors import NotAMemberError
from ratelimits.services import work_admit

logger = logging.getLogger("coursegen.recovery")

BATCH = 500


@dataclass
class ReconcileReport:
    redispatched_tasks: int = 0
    redispatched_outlines: int = 0
    redispatched_regenerations: int = 0
    finalized_jobs: int = 0
    started_jobs: int = 0
    pruned_keys: int = 0
    judge_recovered: int = 0  # judge messages re-sent and courses closed (generation/quality/)
    stuck_jobs_failed: int = 0  # running jobs the watchdog failed (no live task, no progress)
    errors: int = 0  # steps or jobs that raised (logged); the rest of the run went on

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reconcile(*, now: datetime | None = None) -> ReconcileReport:
    """One pass over the rows; `now` (the database's clock unless given) decides what is late."""
    now = now or db_now()
    stale = now - timedelta(seconds=settings.COURSEGEN_REDISPATCH_AFTER_S)
    report = ReconcileReport()

    def step(field: str, run: Callable[[], int]) -> None:
        try:
            setattr(report, field, run())
        except Exception:  # one failing step must not keep the others from running
            logger.exception("reconcile: %s failed", field)
            report.errors += 1

    step("redispatched_tasks", lambda: _redispatch_tasks(now=now))
    step("redispatched_outlines", lambda: _redispatch_outlines(now=now))
    step("redispatched_regenerations", lambda: _redispatch_regenerations(now=now, stale=stale))
    step("finalized_jobs", lambda: _finalize_finished_jobs(now=now, report=report))
    step("stuck_jobs_failed", lambda: _fail_stuck_jobs(now=now, report=report))
    step("started_jobs", lambda: len(services.queue_dispatch()))
    step("pruned_keys", lambda: IdempotencyKey.objects.filter(expires_at__lt=now).delete()[0])
    step("judge_recovered", lambda: judging.judge_recover(now=now, stale=stale))
    if any(report.as_dict().values()):
        logger.warning("reconcile: %s", report.as_dict())
    return report


def overdue_messages(now: datetime) -> Q:
    """Tasks whose message was sent (or was due) long enough ago to be presumed lost. The wait
    is COURSEGEN_REDISPATCH_AFTER_S, doubled by each re-send since a worker last picked the task
    up (`redispatches`), at most COURSEGEN_REDISPATCH_MAX_S: a message that only waits behind a
    busy broker is sent again a few times an hour, not every couple of minutes."""
    after, cap = settings.COURSEGEN_REDISPATCH_AFTER_S, settings.COURSEGEN_REDISPATCH_MAX_S
    late = Q(dispatched_at__isnull=True)
    resends = 0
    while after * 2**resends < cap:
        wait = timedelta(seconds=after * 2**resends)
        late |= Q(redispatches=resends, dispatched_at__lt=now - wait)
        resends += 1
    return late | Q(redispatches__gte=resends, dispatched_at__lt=now - timedelta(seconds=cap))


def waiting_for_batch() -> Q:
    """Tasks with a request open in the Batch API: the batch poller owns them (docs/batch.md)."""
    return Q(batch_requests__status__in=BATCH_REQUEST_OPEN)


def _claim_batch(tasks: QuerySet[GenerationTask], now: datetime) -> list[tuple[int, UUID, int]]:
    """Lock and stamp a batch, so two reconcilers never both re-send the same task: each row's
    message goes at its job's aged priority (generation/queueing.py), its id, job and priority."""
    with transaction.atomic():
        rows = list(
            tasks.select_for_update(skip_locked=True, of=("self",)).values_list(
                "pk", "job_id", "job__priority", "job__created_at"
            )[:BATCH]
        )
        sends = [
            (pk, job_id, aged_broker_priority(priority=priority, since=since, now=now))
            for pk, job_id, priority, since in rows
        ]
        for priority in {p for _, _, p in sends}:
            GenerationTask.objects.filter(
                pk__in=[pk for pk, _, p in sends if p == priority]
            ).update(dispatched_at=now, redispatches=F("redispatches") + 1, priority_sent=priority)
    return sends


def _redispatch_tasks(*, now: datetime) -> int:
    run_task = messages.task(messages.RUN_TASK)
    open_jobs = Q(job__status=JobStatus.RUNNING, job__chord_dispatched_at__isnull=False)
    late = overdue_messages(now)
    expired = Q(status=TaskStatus.RUNNING, lease_expires_at__lt=now) & late
    lost = Q(status=TaskStatus.PENDING) & late
    tasks = (
        GenerationTask.objects.filter(open_jobs, expired | lost)
        .exclude(kind=TaskKind.OUTLINE)
        .exclude(waiting_for_batch())
    )
    rows = _claim_batch(tasks, now)
    for task_id, _, priority in rows:
        run_task.apply_async(args=(task_id,), priority=messages.broker_priority(priority))
    return len(rows)


def _redispatch_outlines(*, now: datetime) -> int:
    run_outline = messages.task(messages.RUN_OUTLINE)
    live_lease = Q(status=TaskStatus.RUNNING, lease_expires_at__gte=now)
    outlines = GenerationTask.objects.filter(
        overdue_messages(now),
        kind=TaskKind.OUTLINE,
        job__status=JobStatus.RUNNING,
        job__chord_dispatched_at__isnull=True,
    ).exclude(live_lease | waiting_for_batch())
    rows = _claim_batch(outlines, now)
    for _, job_id, priority in rows:
        run_outline.apply_async(args=(str(job_id),), priority=messages.broker_priority(priority))
    return len(rows)


def _redispatch_regenerations(*, now: datetime, stale: datetime) -> int:
    """Regeneration requests whose message was lost, or whose worker died (lease expired)."""
    overdue = Q(dispatched_at__lt=stale) | Q(dispatched_at__isnull=True)
    expired = Q(status=RegenerationStatus.RUNNING, lease_expires_at__lt=now)
    lost = Q(status=RegenerationStatus.PENDING)
    # A pending request whose line is queued or at the provider is the poller's to wake.
    waiting = Q(status=RegenerationStatus.PENDING) & services.owner_waiting_for_batch()
    requests = RegenerationRequest.objects.filter(overdue, expired | lost).exclude(waiting)
    with transaction.atomic():
        rows = list(
            requests.select_for_update(skip_locked=True, of=("self",)).values_list(
                "pk", "task__job__priority"
            )[:BATCH]
        )
        RegenerationRequest.objects.filter(pk__in=[pk for pk, _ in rows]).update(
            dispatched_at=now, redispatches=F("redispatches") + 1
        )
    for request_id, priority in rows:
        regeneration.regeneration_send(request_id=request_id, priority=priority)
    return len(rows)


def _finalize_finished_jobs(*, now: datetime, report: ReconcileReport) -> int:
    """Jobs whose chord body never ran: every task ended, the last one at least
    COURSEGEN_FINALIZE_GRACE_S ago. A job that just ended is left to its chord body; one being
    finalized (a live finalize lease) is left to its finalizer. Either may finalize: the
    finalize lease lets one do it. A job whose finalize raises is counted in `errors` and left
    to the next run (and, if it never succeeds, to the watchdog); the others are finalized."""
    stale = now - timedelta(seconds=settings.COURSEGEN_FINALIZE_GRACE_S)
    free = Q(finalize_lease_expires_at__isnull=True) | Q(finalize_lease_expires_at__lt=now)
    jobs = (
        CourseGenerationJob.objects.filter(
            free, status=JobStatus.RUNNING, chord_dispatched_at__lt=stale
        )
        .exclude(tasks__status__in=[TaskStatus.PENDING, TaskStatus.RUNNING])
        .exclude(tasks__finished_at__gte=stale)
        .values_list("pk", flat=True)[:BATCH]
    )
    finalized = 0
    for job_id in list(jobs):
        try:
            finalized += services.job_finalize(job_id=job_id).is_terminal
        except Exception:
            logger.exception("reconcile: job %s could not be finalized", job_id)
            report.errors += 1
    return finalized


def _fail_stuck_jobs(*, now: datetime, report: ReconcileReport) -> int:
    """The watchdog: fail (with an alert) each running job with no live task and no progress
    for COURSEGEN_JOB_WATCHDOG_S, whatever kept it there; staff can resume it."""
    failed = 0
    for job_id in list(jobs_stuck(now=now).values_list("pk", flat=True)[:BATCH]):
        try:
            failed += services.job_fail_stuck(job_id=job_id, now=now) is not None
        except Exception:
            logger.exception("reconcile: stuck job %s could not be failed", job_id)
            report.errors += 1
    return failed


# --- Task-level recovery (API, admin and `manage.py recover_jobs`) ------------------------------
def _resume_admit(
    *, job: CourseGenerationJob, failed: QuerySet[GenerationTask], user: User
) -> None:
    """A resume weighs the tasks it puts back to work; a failed outline plans the whole course
    again, so it weighs the job's full size."""
    kinds = set(failed.values_list("kind", flat=True))
    size = job.course_request.task_count if TaskKind.OUTLINE in kinds else failed.count()
    try:
        work_admit(
            user=user,
            organisation_id=job.organisation_id,
            kind=AdmissionKind.RESUME,
            units=size,
            slot_owner=job.owner,  # the slot is the owner's, whoever resumes
        )
    except NotAMemberError as exc:
        raise services.GenerationError("you are not a member of this job's organisation") from exc


@transaction.atomic
def job_resume(
    *,
    job_id: UUID,
    task_ids: list[int] | None = None,
    by: str = "staff",
    user: User | None = None,
) -> CourseGenerationJob:
    """Put failed tasks (all, or the ones named) of a failed job back to work. When a person
    asks (`user`), the resume passes admission first: their role's resume and task limits
    and their concurrent-job limit (the job takes a slot again)."""
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    if job.status != JobStatus.FAILED:
        raise services.GenerationError(f"only failed jobs can be resumed; this one is {job.status}")
    failed = job.tasks.filter(status=TaskStatus.FAILED)
    if task_ids is not None:
        not_failed = set(task_ids) - set(
            failed.filter(pk__in=task_ids).values_list("pk", flat=True)
        )
        if not_failed:
            raise services.GenerationError(
                f"tasks {sorted(not_failed)} are not failed tasks of this job"
            )
        failed = failed.filter(pk__in=task_ids)
    if not failed.exists():
        raise services.GenerationError("the job has no failed tasks to retry")
    if user is not None:
        _resume_admit(job=job, failed=failed, user=user)
    count = failed.update(
        status=TaskStatus.PENDING,
        error="",
        validation_errors=[],
        deferrals=0,
        deferred_since=None,  # a new run of deferrals: its budget starts at the next outage
        redispatches=0,
        worker="",
        lease_expires_at=None,
        finished_at=None,
        dispatched_at=None,
    )
    job.status, job.error, job.finished_at, job.chord_dispatched_at = (
        JobStatus.QUEUED,
        "",
        None,
        None,
    )
    job.save(update_fields=["status", "error", "finished_at", "chord_dispatched_at", "updated_at"])
    QueueEntry.objects.filter(job=job).update(
        state=QueueState.QUEUED, claimed_at=None, claimed_by="", finished_at=None
    )
    logger.warning("job %s resumed by %s: %s task(s) back to pending", job.id, by, count)
    transaction.on_commit(services.send_dispatch)
    return job
