"""Writes for course generation. Views, commands and Celery tasks call these and nothing else.

The life of a job: `job_submit` creates the job, its outline task and its queue entry;
`queue_dispatch` starts queued jobs in priority order under the global cap; `job_run_outline`
writes the outline and plans one task row per unit; a Celery chord runs `task_run` for every row
and then `job_finalize`. Each step is safe to repeat: claims are conditional updates with leases,
succeeded rows are never sent to the provider again, and terminal jobs are left alone.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from accounts.models import BaseClass, Role
from coursegen import db
from generation import assembly, evaluation, hotpath
from generation.llm import GenerationResult, TaskSpec, generate
from generation.models import (
    AttemptOutcome,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    IdempotencyKey,
    JobStatus,
    Priority,
    QueueEntry,
    QueueState,
    TaskStatus,
)
from generation.prompts import PROMPT_VERSIONS
from generation.providers import Provider, get_provider
from generation.queueing import queued_in_order
from generation.schemas import TASK_TIERS, CourseOutline, CourseRequest, TaskKind, Tier
from monitoring.correlation import correlation_scope, set_correlation_id
from monitoring.logs import log_event
from monitoring.services import job_outcome_record
from ratelimits.selectors import NotAMemberError
from ratelimits.services import admission_check_and_record

logger = logging.getLogger("coursegen.generation")

DISPATCH_LOCK_KEY = 7_202_611  # any constant unique to this lock among advisory locks
ROLE_PRIORITY = {
    Role.ADMIN: Priority.HIGH,
    Role.TEACHER: Priority.NORMAL,
    Role.STUDENT: Priority.LOW,
}


class GenerationError(Exception):
    """A request that cannot be carried out; the message is safe to show to the caller."""


def worker_name() -> str:
    return f"{_host()}:{os.getpid()}:{threading.get_ident()}"


@functools.cache
def _host() -> str:
    return socket.gethostname()


def model_for(tier: Tier) -> str:
    return (
        settings.COURSEGEN_MODEL_COMPLEX
        if tier is Tier.COMPLEX
        else settings.COURSEGEN_MODEL_SIMPLE
    )


# --- Submit ---------------------------------------------------------------------------------------
@transaction.atomic
def job_submit(
    *,
    user: User,
    base_class: BaseClass,
    request: CourseRequest,
    idempotency_key: IdempotencyKey | None = None,
) -> CourseGenerationJob:
    """Admit and queue a course request. The job returned holds its rows as inserted: its queue
    entry and its tasks (the outline), like a prefetch; `refresh_from_db()` reads them anew."""
    try:
        # The role is the user's in the class's organisation, read with the usage. Raises
        # RateLimitExceeded (and this transaction rolls back) when over a limit.
        admitted = admission_check_and_record(user=user, organisation_id=base_class.organisation_id)
    except NotAMemberError as exc:
        raise GenerationError("you are not a member of this class's organisation") from exc
    priority = ROLE_PRIORITY[admitted.role]
    job = CourseGenerationJob(
        owner=user,
        organisation_id=base_class.organisation_id,
        base_class=base_class,
        request=request.model_dump(mode="json"),
        priority=priority,
    )
    outline = _task_new(job=job, kind=TaskKind.OUTLINE, key="course", position=0)
    entry = QueueEntry(job=job, priority=priority)
    if db.hand_written_sql():  # one round trip for the three rows
        hotpath.insert_together(job, outline, entry)
    else:
        for row in (job, outline, entry):
            row.save(force_insert=True)
    _tasks_in_hand(job, [outline])
    if idempotency_key is not None:  # linked in the same transaction: a replay finds this job
        IdempotencyKey.objects.filter(pk=idempotency_key.pk).update(job=job)
    set_correlation_id(job.correlation_id)  # the rest of this request, and its tasks, is the job's
    log_event(
        "job.submitted",
        f"job {job.id} submitted by {user.pk}: {request.topic}",
        job=job,
        user=user,
        data={"topic": request.topic, "priority": priority},
    )
    transaction.on_commit(send_dispatch)
    return job


def _tasks_in_hand(job: CourseGenerationJob, tasks: list[GenerationTask]) -> None:
    """Let `job.tasks.all()` return `tasks` without a query, as prefetch_related would: a new
    job's tasks are the ones just inserted, and the submit response lists them."""
    in_hand = job.tasks.all()  # lazy: filtered to the job, not run
    in_hand._result_cache = tasks
    in_hand._prefetch_done = True  # type: ignore[attr-defined]  # Django's own prefetch state
    job._prefetched_objects_cache = {"tasks": in_hand}  # type: ignore[attr-defined]  # ditto


def _task_new(
    *, job: CourseGenerationJob, kind: TaskKind, key: str, position: int
) -> GenerationTask:
    tier = TASK_TIERS[kind]
    return GenerationTask(
        job=job,
        kind=kind,
        key=key,
        position=position,
        tier=tier,
        model=model_for(tier),
        prompt_version=PROMPT_VERSIONS[kind],
    )


DISPATCH_ASKED_KEY = "generation:dispatch-asked"


def send_dispatch() -> None:
    """Ask for a dispatcher run, unless one was asked for and has not started yet.

    Every submit and every finished job asks; under load that was hundreds of dispatcher runs
    queueing on the advisory lock. The dispatcher clears the flag before it reads the queue, so
    whatever committed before a skipped ask is seen by the run already asked for. The flag
    expires (a lost message), and beat runs the dispatcher every few seconds anyway.
    """
    from generation.tasks import dispatch_queue

    try:
        asked = cache.add(DISPATCH_ASKED_KEY, 1, timeout=settings.COURSEGEN_DISPATCH_ASK_TTL_S)
    except Exception:  # the cache is only an optimisation: ask anyway
        asked = True
    if asked:
        dispatch_queue.apply_async(priority=settings.HOUSEKEEPING_PRIORITY)


def dispatch_asked_clear() -> None:
    try:
        cache.delete(DISPATCH_ASKED_KEY)
    except Exception:
        logger.warning("could not clear the dispatch flag; it expires on its own")


# --- Queue ----------------------------------------------------------------------------------------
def running_job_count() -> int:
    return QueueEntry.objects.filter(state=QueueState.CLAIMED).count()


def queue_dispatch(*, worker: str | None = None, limit: int | None = None) -> list[UUID]:
    """Start queued jobs in priority order while fewer than the global cap are running."""
    started: list[UUID] = []
    with transaction.atomic():
        _dispatch_lock()
        free = settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS - running_job_count()
        if free <= 0:
            return started
        batch = limit if limit is not None else free
        entries = list(
            queued_in_order(
                QueueEntry.objects.select_for_update(skip_locked=True).filter(
                    state=QueueState.QUEUED
                )
            )[: min(free, batch)]
        )
        now = timezone.now()
        for entry in entries:
            entry.state, entry.claimed_at, entry.claimed_by = (
                QueueState.CLAIMED,
                now,
                worker or worker_name(),
            )
            started.append(entry.job_id)
        QueueEntry.objects.bulk_update(entries, ["state", "claimed_at", "claimed_by"])
        CourseGenerationJob.objects.filter(pk__in=started, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, started_at=now
        )
        GenerationTask.objects.filter(job_id__in=started, kind=TaskKind.OUTLINE).update(
            dispatched_at=now
        )
        transaction.on_commit(lambda: _send_outlines(started))
    return started


def _dispatch_lock() -> None:
    """One dispatcher decides at a time, so two can never both fill the last free slot."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK_KEY])
    # SQLite (the embedded demo) already serialises writing transactions.


def _send_outlines(job_ids: list[UUID]) -> None:
    from generation.tasks import run_outline

    jobs = CourseGenerationJob.objects.in_bulk(job_ids)
    for job_id in job_ids:
        # One dispatcher run starts many jobs: each one's messages carry its own correlation id.
        with correlation_scope(jobs[job_id].correlation_id):
            log_event("job.started", f"job {job_id} started", job=jobs[job_id])
            run_outline.apply_async(args=(str(job_id),), priority=jobs[job_id].priority)


# --- Claims ---------------------------------------------------------------------------------------
def task_claim(*, task_id: int, worker: str) -> bool:
    """Take the task's lease; False when it already succeeded or another worker holds a lease."""
    now = timezone.now()
    claimable = Q(status=TaskStatus.PENDING) | Q(
        status=TaskStatus.RUNNING, lease_expires_at__lt=now
    )
    updated = GenerationTask.objects.filter(claimable, pk=task_id).update(
        status=TaskStatus.RUNNING,
        lease_expires_at=now + timedelta(seconds=settings.COURSEGEN_TASK_LEASE_S),
        worker=worker,
        runs=F("runs") + 1,
        started_at=now,
    )
    return updated == 1


def _task_claim_and_load(*, task_id: int, worker: str) -> GenerationTask | None:
    if db.hand_written_sql():
        now = timezone.now()
        lease = now + timedelta(seconds=settings.COURSEGEN_TASK_LEASE_S)
        return hotpath.claim_and_load(task_id=task_id, worker=worker, now=now, lease=lease)
    if not task_claim(task_id=task_id, worker=worker):
        return None
    return GenerationTask.objects.select_related("job").get(pk=task_id)


# --- Running one task -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRunResult:
    task_id: int
    status: str
    ran: bool  # False when the message was a repeat and nothing was done
    retry_in: float | None = None  # set when the task was deferred: send it again after this


def task_run(
    *, task_id: int, worker: str | None = None, provider: Provider | None = None
) -> TaskRunResult:
    worker = worker or worker_name()
    task = _task_claim_and_load(task_id=task_id, worker=worker)
    if task is None:
        status = GenerationTask.objects.filter(pk=task_id).values_list("status", flat=True).first()
        return TaskRunResult(task_id, str(status), ran=False)
    if task.job.status == JobStatus.CANCELLED:
        _task_finish(task=task, worker=worker, status=TaskStatus.CANCELLED, error="job cancelled")
        return TaskRunResult(task_id, TaskStatus.CANCELLED, ran=False)
    spec = _spec_for(task, worker)
    _db_release_during_io()
    started = time.monotonic()
    try:
        result = generate(spec, provider or get_provider())
    except Exception as exc:  # a bug must fail this task, not hang the job waiting on it
        logger.exception("task %s crashed", task_id)
        result = GenerationResult(error=f"internal error: {type(exc).__name__}: {exc}")
    wall_s = time.monotonic() - started
    if result.defer_s is not None and task.deferrals < settings.COURSEGEN_TASK_MAX_DEFERRALS:
        delay = _task_defer(task=task, worker=worker, result=result)
        return TaskRunResult(task_id, TaskStatus.PENDING, ran=True, retry_in=delay)
    status = _record_result(task=task, worker=worker, result=result, wall_s=wall_s)
    return TaskRunResult(task_id, status, ran=True)


def _db_release_during_io() -> None:
    """Give a pooled connection back while the provider call runs (seconds without a query), so
    a worker's pool serves hundreds of concurrent tasks with a few connections."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def _spec_for(task: GenerationTask, worker: str) -> TaskSpec:
    from generation.prompts import task_context

    request = task.job.course_request
    outline = CourseOutline.model_validate(task.job.outline) if task.job.outline else None
    tier = Tier(task.tier)
    other = Tier.SIMPLE if tier is Tier.COMPLEX else Tier.COMPLEX
    return TaskSpec(
        kind=task.task_kind,
        tier=tier,
        model=task.model or model_for(tier),
        request=request,
        outline=outline,
        context={
            **task_context(task.task_kind, task.key, request=request, outline=outline),
            "job_id": str(task.job_id),
        },
        heartbeat=lambda: task_lease_renew(task_id=task.pk, worker=worker),
        deadline=time.monotonic() + settings.COURSEGEN_TASK_DEADLINE_S,
        fallback_model=model_for(other) if settings.COURSEGEN_BREAKER_FALLBACK_TIER else None,
    )


def task_lease_renew(*, task_id: int, worker: str) -> bool:
    """Extend our lease before another provider call; False if another worker owns the task."""
    lease = timezone.now() + timedelta(seconds=settings.COURSEGEN_TASK_LEASE_S)
    return bool(
        GenerationTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, worker=worker).update(
            lease_expires_at=lease
        )
    )


def _attempt_rows(task: GenerationTask, result: GenerationResult) -> list[GenerationAttempt]:
    return [
        GenerationAttempt(
            task=task,
            number=task.attempts + a.number,
            kind=a.kind,
            part=a.part,
            outcome=a.outcome,
            model=a.model,
            input_tokens=a.usage.input_tokens,
            cached_tokens=a.usage.cached_tokens,
            output_tokens=a.usage.output_tokens,
            cost_usd=a.cost_usd,
            latency_ms=a.latency_ms,
            errors=a.errors,
        )
        for a in result.attempts
    ]


def _usage_totals(result: GenerationResult) -> dict[str, Any]:
    """What one run adds to the task's counters (the columns of the same names)."""
    return {
        "attempts": len(result.attempts),
        "input_tokens": result.total("input_tokens"),
        "cached_tokens": result.total("cached_tokens"),
        "output_tokens": result.total("output_tokens"),
        "cost_usd": result.cost_usd,
        "reask_cost_usd": result.reask_cost_usd,
    }


def _usage_updates(result: GenerationResult) -> dict[str, Any]:
    return {column: F(column) + value for column, value in _usage_totals(result).items()}


@transaction.atomic
def _record_result(
    *, task: GenerationTask, worker: str, result: GenerationResult, wall_s: float
) -> str:
    status = TaskStatus.SUCCEEDED if result.ok else TaskStatus.FAILED
    fields = {
        "output": result.data,
        "model": result.attempts[-1].model if result.attempts else task.model,
        "validation_errors": result.validation_errors,
        "error": result.error,
        "duration_ms": round(wall_s * 1000),
    }
    if db.hand_written_sql():
        updated = hotpath.record_and_progress(
            task=task,
            worker=worker,
            now=timezone.now(),
            status=status,
            fields=fields,
            usage=_usage_totals(result),
            attempts=[_attempt_dict(row) for row in _attempt_rows(task, result)],
        )
    else:
        updated = _task_close(task=task, worker=worker, status=status, fields=fields, result=result)
        if updated:
            job_refresh_progress(job_id=task.job_id)
    if not updated:
        # Our lease expired and another worker took the task over; its result stands.
        logger.warning("task %s: lease lost by %s, result discarded", task.pk, worker)
        return str(GenerationTask.objects.values_list("status", flat=True).get(pk=task.pk))
    log_event(
        f"task.{status}",
        f"{task.kind} {task.key} {status} after {len(result.attempts)} provider call(s)",
        level="info" if result.ok else "error",
        job=task.job,
        task=task,
        duration_ms=wall_s * 1000,
        data={
            "model": task.model,
            "attempts": len(result.attempts),
            "output_tokens": result.total("output_tokens"),
            "cost_usd": result.cost_usd,
            "error": result.error,
            "validation_errors": result.validation_errors[:10],
        },
    )
    return status


def _task_close(
    *,
    task: GenerationTask,
    worker: str,
    status: str,
    fields: dict[str, Any],
    result: GenerationResult,
) -> bool:
    """The ORM version of hotpath.record_and_progress (databases other than PostgreSQL)."""
    # Every call is paid for, so the ledger keeps it even when our lease was lost.
    GenerationAttempt.objects.bulk_create(_attempt_rows(task, result))
    return bool(
        GenerationTask.objects.filter(pk=task.pk, status=TaskStatus.RUNNING, worker=worker).update(
            status=status,
            lease_expires_at=None,
            finished_at=timezone.now(),
            **fields,
            **_usage_updates(result),
        )
    )


def _attempt_dict(row: GenerationAttempt) -> dict[str, Any]:
    return {
        "number": row.number,
        "kind": row.kind,
        "part": row.part,
        "outcome": row.outcome,
        "model": row.model,
        "input_tokens": row.input_tokens,
        "cached_tokens": row.cached_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": str(row.cost_usd),
        "latency_ms": row.latency_ms,
        "errors": row.errors,
    }


@transaction.atomic
def _task_defer(*, task: GenerationTask, worker: str, result: GenerationResult) -> float:
    """Give the task back (pending) to be sent again later: the provider is unavailable now."""
    delay = min(max(result.defer_s or 0.0, 0.5), settings.COURSEGEN_TASK_DEFER_MAX_S)
    GenerationAttempt.objects.bulk_create(_attempt_rows(task, result))
    GenerationTask.objects.filter(pk=task.pk, status=TaskStatus.RUNNING, worker=worker).update(
        status=TaskStatus.PENDING,
        lease_expires_at=None,
        worker="",
        error=result.error,
        deferrals=F("deferrals") + 1,
        dispatched_at=timezone.now() + timedelta(seconds=delay),
        **_usage_updates(result),
    )
    logger.warning("task %s deferred %.1fs: %s", task.pk, delay, result.error)
    return delay


def _task_finish(*, task: GenerationTask, worker: str, status: TaskStatus, error: str) -> None:
    GenerationTask.objects.filter(pk=task.pk, worker=worker).update(
        status=status, error=error, lease_expires_at=None, finished_at=timezone.now()
    )


def job_refresh_progress(*, job_id: UUID) -> None:
    counts = GenerationTask.objects.filter(job_id=job_id).aggregate(
        total=Count("pk"), done=Count("pk", filter=Q(status=TaskStatus.SUCCEEDED))
    )
    # The outline alone is not the whole job: until tasks are planned, progress stays small.
    progress = 100 * counts["done"] // max(counts["total"], 1)
    CourseGenerationJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        progress=progress
    )


# --- Outline, planning and the chord --------------------------------------------------------------
def job_run_outline(
    *, job_id: UUID, worker: str | None = None, provider: Provider | None = None
) -> float | None:
    """Write the outline, plan the tasks and send the chord. Returns a delay when deferred."""
    job = CourseGenerationJob.objects.get(pk=job_id)
    if job.status != JobStatus.RUNNING:
        return None
    outline_task = job.tasks.get(kind=TaskKind.OUTLINE)
    result = task_run(task_id=outline_task.pk, worker=worker, provider=provider)
    if result.retry_in is not None:
        return result.retry_in
    outline_task.refresh_from_db()
    if outline_task.status == TaskStatus.FAILED:
        job_finalize(job_id=job_id)
        return None
    if outline_task.status != TaskStatus.SUCCEEDED:
        logger.info("job %s: outline %s elsewhere (%s)", job_id, outline_task.status, result)
        return None
    job_plan_tasks(job_id=job_id, outline=outline_task.output or {})
    log_event("job.outline_done", f"job {job_id}: outline done", job=job, task=outline_task)
    job_dispatch_chord(job_id=job_id)
    return None


@transaction.atomic
def job_plan_tasks(*, job_id: UUID, outline: dict[str, Any]) -> None:
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    if job.outline is not None:
        return  # planned already (a repeated message)
    parsed = CourseOutline.model_validate(outline)
    job.outline = outline
    job.save(update_fields=["outline", "updated_at"])
    rows = [
        GenerationTask(
            job=job,
            kind=kind,
            key=key,
            position=position,
            tier=TASK_TIERS[kind],
            model=model_for(TASK_TIERS[kind]),
            prompt_version=PROMPT_VERSIONS[kind],
        )
        for position, (kind, key) in enumerate(plan_units(parsed), start=1)
    ]
    GenerationTask.objects.bulk_create(rows, ignore_conflicts=True)
    job_refresh_progress(job_id=job_id)


def plan_units(outline: CourseOutline) -> list[tuple[TaskKind, str]]:
    """Every unit of a course after its outline, in reading order."""
    units: list[tuple[TaskKind, str]] = []
    for m, module in enumerate(outline.modules, start=1):
        for n in range(1, len(module.lessons) + 1):
            key = f"m{m}.l{n}"
            units += [
                (TaskKind.LESSON_SECTION, key),
                (TaskKind.ASSESSMENT, key),
                (TaskKind.BRAIN_BYTES, key),
            ]
        units.append((TaskKind.MODULE_SUMMARY, f"m{m}"))
    units += [(TaskKind.MIND_MAP, "course"), (TaskKind.METADATA, "course")]
    return units


def job_dispatch_chord(*, job_id: UUID) -> bool:
    """Send the chord once per job: only the caller that sets chord_dispatched_at sends it."""
    won = CourseGenerationJob.objects.filter(
        pk=job_id, status=JobStatus.RUNNING, chord_dispatched_at__isnull=True
    ).update(chord_dispatched_at=timezone.now())
    if not won:
        return False
    job = CourseGenerationJob.objects.only("priority").get(pk=job_id)
    pending_tasks = GenerationTask.objects.filter(job_id=job_id, status=TaskStatus.PENDING).exclude(
        kind=TaskKind.OUTLINE
    )
    pending = list(pending_tasks.values_list("pk", flat=True))
    pending_tasks.update(dispatched_at=timezone.now())
    transaction.on_commit(lambda: _send_chord(job_id, pending, job.priority))
    return True


def _send_chord(job_id: UUID, task_ids: list[int], priority: int) -> None:
    """The job's tasks as a chord header at the job's priority; its body finalizes the job.

    Header tasks store a small result, which is how the Redis result backend counts the chord
    down (one INCR per task); everything else ignores results. A lost chord (Redis restarted)
    is the reconciler's to find: it re-sends open tasks and finalizes jobs with none left.
    """
    from celery import chord

    from generation.tasks import finalize_job, run_task

    header = [run_task.si(task_id).set(priority=priority) for task_id in task_ids]
    # The body goes before queued generation messages: it frees a running slot.
    body = finalize_job.si(str(job_id)).set(priority=settings.HOUSEKEEPING_PRIORITY)
    if run_task.app.conf.task_always_eager:
        # In-process, a chord is its header then its body. Celery's eager chord joins results
        # under a process-wide "may block" flag that races when several threads run jobs at once.
        for signature in header:
            signature.apply()
        body.apply()
    elif not header:  # a resumed job with nothing left to run: the body alone
        body.apply_async()
    else:
        chord(header, body).apply_async()


# --- Finalize -------------------------------------------------------------------------------------
def job_finalize(*, job_id: UUID) -> CourseGenerationJob:
    """Assemble the course and close the job, once every task has ended. Safe to repeat."""
    from generation.regeneration import job_dedupe_questions

    # Assessments ran in parallel: only now can questions be compared across the course.
    job_dedupe_questions(job_id=job_id)
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
        _apply_totals(job, tasks)
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
        _queue_entry_close(job=job, state=QueueState.DONE)
        transaction.on_commit(send_dispatch)
    job_outcome_record(job=job)  # logs the outcome, alerts on failure, checks quality
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


def _apply_totals(job: CourseGenerationJob, tasks: list[GenerationTask]) -> None:
    job.input_tokens = sum(t.input_tokens for t in tasks)
    job.cached_tokens = sum(t.cached_tokens for t in tasks)
    job.output_tokens = sum(t.output_tokens for t in tasks)
    job.cost_usd = sum((t.cost_usd for t in tasks), Decimal(0))
    job.reask_cost_usd = sum((t.reask_cost_usd for t in tasks), Decimal(0))


def _queue_entry_close(*, job: CourseGenerationJob, state: QueueState) -> None:
    QueueEntry.objects.filter(job=job).exclude(
        state__in=[QueueState.DONE, QueueState.CANCELLED]
    ).update(state=state, finished_at=timezone.now())


# --- Staff controls -------------------------------------------------------------------------------
@transaction.atomic
def job_set_priority(*, job_id: UUID, priority: int) -> None:
    if priority not in Priority.values:
        raise GenerationError(f"priority must be one of {Priority.values}")
    CourseGenerationJob.objects.filter(pk=job_id).update(priority=priority)
    QueueEntry.objects.filter(job_id=job_id, state=QueueState.QUEUED).update(priority=priority)


# --- Cancel ---------------------------------------------------------------------------------------
def job_cancel(*, job_id: UUID, reason: str = "cancelled by user") -> CourseGenerationJob:
    with transaction.atomic():
        job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
        if job.is_terminal:
            raise GenerationError(f"the job has already {job.status}")
        job.tasks.filter(status=TaskStatus.PENDING).update(
            status=TaskStatus.CANCELLED, error=reason
        )
        job.status, job.error, job.finished_at = JobStatus.CANCELLED, reason, timezone.now()
        job.save(update_fields=["status", "error", "finished_at", "updated_at"])
        _queue_entry_close(job=job, state=QueueState.CANCELLED)
        transaction.on_commit(send_dispatch)
    log_event("job.cancelled", f"job {job.id} cancelled: {reason}", level="warning", job=job)
    return job
