"""Running one task: claim its row with a lease, call the provider through the LLM
conversation, then record the result (or give the task back, deferred, when the provider is
unavailable). A repeated message finds the row claimed or succeeded and does nothing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from coursegen import db
from generation import hotpath
from generation.llm import GenerationResult, TaskSpec, generate
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus
from generation.prompts import task_context
from generation.providers import Provider, get_provider
from generation.schemas import CourseOutline, Tier
from generation.services import common, ledger
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


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
    worker = worker or common.worker_name()
    task = _task_claim_and_load(task_id=task_id, worker=worker)
    if task is None:
        status = GenerationTask.objects.filter(pk=task_id).values_list("status", flat=True).first()
        return TaskRunResult(task_id, str(status), ran=False)
    if task.job.status == JobStatus.CANCELLED:
        _task_finish(task=task, worker=worker, status=TaskStatus.CANCELLED, error="job cancelled")
        return TaskRunResult(task_id, TaskStatus.CANCELLED, ran=False)
    spec = task_spec_build(task=task, worker=worker)
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


def task_spec_build(*, task: GenerationTask, worker: str) -> TaskSpec:
    """What a run of the task asks of the LLM conversation: its kind, tier and model, the
    request and outline, the prompt context, a lease-renewing heartbeat and the deadline."""
    request = task.job.course_request
    outline = CourseOutline.model_validate(task.job.outline) if task.job.outline else None
    tier = Tier(task.tier)
    other = Tier.SIMPLE if tier is Tier.COMPLEX else Tier.COMPLEX
    return TaskSpec(
        kind=task.task_kind,
        tier=tier,
        model=task.model or common.model_for(tier),
        request=request,
        outline=outline,
        context={
            **task_context(task.task_kind, task.key, request=request, outline=outline),
            "job_id": str(task.job_id),
        },
        heartbeat=lambda: task_lease_renew(task_id=task.pk, worker=worker),
        deadline=time.monotonic() + settings.COURSEGEN_TASK_DEADLINE_S,
        fallback_model=common.model_for(other)
        if settings.COURSEGEN_BREAKER_FALLBACK_TIER
        else None,
    )


def task_lease_renew(*, task_id: int, worker: str) -> bool:
    """Extend our lease before another provider call; False if another worker owns the task."""
    lease = timezone.now() + timedelta(seconds=settings.COURSEGEN_TASK_LEASE_S)
    return bool(
        GenerationTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, worker=worker).update(
            lease_expires_at=lease
        )
    )


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
            usage=ledger.usage_totals(result=result),
            attempts=ledger.attempt_dicts(task=task, result=result),
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
    ledger.task_attempts_record(task=task, result=result)
    return bool(
        GenerationTask.objects.filter(pk=task.pk, status=TaskStatus.RUNNING, worker=worker).update(
            status=status,
            lease_expires_at=None,
            finished_at=timezone.now(),
            **fields,
            **ledger.usage_increments(result=result),
        )
    )


@transaction.atomic
def _task_defer(*, task: GenerationTask, worker: str, result: GenerationResult) -> float:
    """Give the task back (pending) to be sent again later: the provider is unavailable now."""
    delay = min(max(result.defer_s or 0.0, 0.5), settings.COURSEGEN_TASK_DEFER_MAX_S)
    ledger.task_attempts_record(task=task, result=result)
    GenerationTask.objects.filter(pk=task.pk, status=TaskStatus.RUNNING, worker=worker).update(
        status=TaskStatus.PENDING,
        lease_expires_at=None,
        worker="",
        error=result.error,
        deferrals=F("deferrals") + 1,
        dispatched_at=timezone.now() + timedelta(seconds=delay),
        **ledger.usage_increments(result=result),
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
