"""The queue: asking for a dispatcher run, starting queued jobs in priority order under the
global cap, and closing a job's queue entry."""

from __future__ import annotations

import logging
from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from generation import messages
from generation.models import (
    CourseGenerationJob,
    GenerationTask,
    JobStatus,
    QueueEntry,
    QueueState,
    Urgency,
)
from generation.queueing import aged_broker_priority, queued_in_order
from generation.schemas import TaskKind
from generation.services import common
from monitoring.correlation import correlation_scope
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")

DISPATCH_LOCK_KEY = 7_202_611  # any constant unique to this lock among advisory locks
DISPATCH_ASKED_KEY = "generation:dispatch-asked"


def send_dispatch() -> None:
    """Ask for a dispatcher run, unless one was asked for and has not started yet.

    Every submit and every finished job asks; under load that was hundreds of dispatcher runs
    queueing on the advisory lock. The dispatcher clears the flag before it reads the queue, so
    whatever committed before a skipped ask is seen by the run already asked for. The flag
    expires (a lost message), and beat runs the dispatcher every few seconds anyway.
    """
    try:
        asked = cache.add(DISPATCH_ASKED_KEY, 1, timeout=settings.COURSEGEN_DISPATCH_ASK_TTL_S)
    except Exception:  # the cache is only an optimisation: ask anyway
        asked = True
    if asked:
        messages.task(messages.DISPATCH_QUEUE).apply_async(
            priority=messages.housekeeping_priority()
        )


def send_dispatch_if_queued() -> None:
    """After a job freed its running slot (committed): ask for a dispatcher run only when a job
    is waiting for one. Most finished jobs find the queue empty, and a dispatcher run is a Celery
    message, a transaction and five statements. A job queued after this read asks for its own
    run after its commit, and that run sees the slot freed before it."""
    if QueueEntry.objects.filter(state=QueueState.QUEUED).exists():
        send_dispatch()


def dispatch_asked_clear() -> None:
    try:
        cache.delete(DISPATCH_ASKED_KEY)
    except Exception:
        logger.warning("could not clear the dispatch flag; it expires on its own")


def running_job_count() -> int:
    """Jobs holding a running slot. A batch job waits for its batches without a worker, so
    it holds none (docs/batch.md)."""
    return (
        QueueEntry.objects.filter(state=QueueState.CLAIMED)
        .exclude(job__urgency=Urgency.BATCH)
        .count()
    )


def queue_dispatch(*, worker: str | None = None, limit: int | None = None) -> list[UUID]:
    """Start queued jobs in priority order while fewer than the global cap are running."""
    started: list[UUID] = []
    with transaction.atomic():
        _dispatch_lock()
        free = settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS - running_job_count()
        if free <= 0:
            return started
        batch = limit if limit is not None else free
        # The one lock order is a job's row before its queue entry's (job_cancel,
        # job_set_priority, job_resume and job_finalize take the job first). The dispatcher
        # reads entries first, so it takes each entry and its job in one statement and never
        # waits: a job locked by a cancel or a priority change is passed over until the next run.
        entries = list(
            queued_in_order(
                QueueEntry.objects.select_related("job")
                .select_for_update(skip_locked=True, of=("self", "job"))
                .filter(state=QueueState.QUEUED)
            )[: min(free, batch)]
        )
        now = timezone.now()
        priorities: dict[UUID, int] = {}
        for entry in entries:
            entry.state, entry.claimed_at, entry.claimed_by = (
                QueueState.CLAIMED,
                now,
                worker or common.worker_name(),
            )
            started.append(entry.job_id)
            # The queue's aging carries on into the broker (generation/queueing.py).
            priorities[entry.job_id] = aged_broker_priority(
                priority=entry.job.priority, since=entry.job.created_at, now=now
            )
        QueueEntry.objects.bulk_update(entries, ["state", "claimed_at", "claimed_by"])
        CourseGenerationJob.objects.filter(pk__in=started, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, started_at=now
        )
        for priority in set(priorities.values()):
            GenerationTask.objects.filter(
                job_id__in=[job for job, p in priorities.items() if p == priority],
                kind=TaskKind.OUTLINE,
            ).update(dispatched_at=now, priority_sent=priority)
        transaction.on_commit(lambda: _send_outlines(priorities))
    return started


def _dispatch_lock() -> None:
    """One dispatcher decides at a time, so two can never both fill the last free slot."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK_KEY])
    # SQLite (the embedded demo) already serialises writing transactions.


def _send_outlines(priorities: dict[UUID, int]) -> None:
    run_outline = messages.task(messages.RUN_OUTLINE)
    jobs = CourseGenerationJob.objects.in_bulk(list(priorities))
    for job_id, priority in priorities.items():
        # One dispatcher run starts many jobs: each one's messages carry its own correlation id.
        with correlation_scope(jobs[job_id].correlation_id):
            log_event("job.started", f"job {job_id} started", job=jobs[job_id])
            run_outline.apply_async(
                args=(str(job_id),), priority=messages.broker_priority(priority)
            )


def queue_entry_close(*, job: CourseGenerationJob, state: QueueState) -> None:
    QueueEntry.objects.filter(job=job).exclude(
        state__in=[QueueState.DONE, QueueState.CANCELLED]
    ).update(state=state, finished_at=timezone.now())


def queue_entry_reprioritise(*, job_id: UUID, priority: int) -> None:
    """A waiting job's new priority; the caller holds the job's row (job before entry)."""
    QueueEntry.objects.filter(job_id=job_id, state=QueueState.QUEUED).update(priority=priority)
