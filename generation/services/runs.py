"""Running one task: claim its row with a lease, call the provider through the LLM
conversation, then record the result (or give the task back, deferred, when the provider is
unavailable). A repeated message finds the row claimed or succeeded and does nothing."""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.db.models.functions import Coalesce, Now
from django.utils import timezone
from tenacity import Retrying, retry_if_exception, stop_before_delay, wait_exponential

from coursegen import db
from generation import cache, hotpath
from generation.concurrency import call_rank
from generation.field_errors import public_error
from generation.leases import db_now_plus
from generation.llm import BatchReplay, GenerationResult, TaskSpec, generate
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus
from generation.prompts import task_context
from generation.providers import Provider, get_moderation_provider, get_provider
from generation.schemas import CourseOutline, CourseRequest, TaskKind, Tier
from generation.services import alerts, common, ledger
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


# --- Claims ---------------------------------------------------------------------------------------
def task_claim(*, task_id: int, worker: str) -> bool:
    """Take the task's lease; False when it already succeeded or another worker holds a lease.
    Leases are on the database's clock. The row's new `runs` is the claim's run number (with
    `worker`, the fencing token of its writes). A claim is a pick-up: the reconciler's
    back-off for lost messages starts again."""
    claimable = Q(status=TaskStatus.PENDING) | Q(
        status=TaskStatus.RUNNING, lease_expires_at__lt=Now()
    )
    updated = GenerationTask.objects.filter(claimable, pk=task_id).update(
        status=TaskStatus.RUNNING,
        lease_expires_at=db_now_plus(settings.COURSEGEN_TASK_LEASE_S),
        worker=worker,
        runs=F("runs") + 1,
        started_at=Now(),
        redispatches=0,
    )
    return updated == 1


def _task_claim_and_load(*, task_id: int, worker: str) -> GenerationTask | None:
    if db.hand_written_sql():
        return hotpath.claim_and_load(
            task_id=task_id, worker=worker, lease_s=settings.COURSEGEN_TASK_LEASE_S
        )
    if not task_claim(task_id=task_id, worker=worker):
        return None
    return GenerationTask.objects.select_related("job").get(pk=task_id)


def _owned(task: GenerationTask, worker: str) -> QuerySet[GenerationTask]:
    """The task's row while this run still holds it: its worker and its run number."""
    return GenerationTask.objects.filter(
        pk=task.pk, status=TaskStatus.RUNNING, worker=worker, runs=task.runs
    )


@dataclass
class LeaseClock:
    """When this process may assume its lease still holds (monotonic), moved on by renewals."""

    seconds: float
    until: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.until = time.monotonic() + self.seconds

    def renewed(self, ok: bool) -> bool:
        if ok:
            self.until = time.monotonic() + self.seconds
        return ok

    def left_s(self) -> float:
        return max(self.until - time.monotonic() - 1.0, 0.0)


T = TypeVar("T")
DATABASE_ERRORS = (OperationalError, InterfaceError)


def while_lease_holds(lease: LeaseClock, write: Callable[[], T]) -> T:
    """Run a write, retried through database errors (a restart, a failover, a dropped
    connection) for as long as the lease holds: the write records calls already paid for.
    Each retry starts on a new connection. Inside an outer transaction nothing can be retried."""

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, DATABASE_ERRORS) and not connection.in_atomic_block

    retrying = Retrying(
        retry=retry_if_exception(retryable),
        stop=stop_before_delay(lease.left_s()),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        before_sleep=_reconnect,
        reraise=True,
    )
    return retrying(write)


def _reconnect(state: Any) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "database error while recording (attempt %s), retrying: %s", state.attempt_number, exc
    )
    connection.close()


# --- Running one task -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRunResult:
    task_id: int
    status: str
    ran: bool  # False when the message was a repeat and nothing was done
    retry_in: float | None = None  # set when the task was deferred: send it again after this


def task_run(
    *,
    task_id: int,
    worker: str | None = None,
    provider: Provider | None = None,
    batch: BatchReplay | None = None,
    recorded: Callable[[GenerationResult], object] | None = None,
) -> TaskRunResult:
    """Run one task. `batch` holds Batch API lines' answers (docs/batch.md), taken instead of
    calls, with no cache in between; `recorded` runs in the transaction that records the
    result (or defers the task, or gives it back to wait for a repair's batch line), so a line
    counts as taken exactly when its attempt is in the ledger."""
    worker = worker or common.worker_name()
    task = _task_claim_and_load(task_id=task_id, worker=worker)
    if task is None:
        status = GenerationTask.objects.filter(pk=task_id).values_list("status", flat=True).first()
        return TaskRunResult(task_id, str(status), ran=False)
    lease = LeaseClock(settings.COURSEGEN_TASK_LEASE_S)
    if task.job.status == JobStatus.CANCELLED:
        _task_finish(task=task, worker=worker, status=TaskStatus.CANCELLED, error="job cancelled")
        return TaskRunResult(task_id, TaskStatus.CANCELLED, ran=False)
    spec = task_spec_build(
        task=task,
        worker=worker,
        heartbeat=lambda: lease.renewed(
            task_lease_renew(task_id=task.pk, worker=worker, run=task.runs)
        ),
    )
    cached = batch is None and cache.cache_applies(task=task)
    started = time.monotonic()
    result = cache.cache_lookup(task=task, spec=spec) if cached else None
    hit = result is not None
    if result is None:
        _db_release_during_io()
        try:
            result = generate(spec, provider or get_provider(), batch=batch)
        except Exception as exc:  # a bug must fail this task, not hang the job waiting on it
            logger.exception("task %s crashed", task_id)
            result = GenerationResult(error=public_error("internal error", exc))
    wall_s = time.monotonic() - started
    if result.batch_request is not None:  # a repair waits for the next batch
        given_back = while_lease_holds(
            lease,
            lambda: _marked(
                lambda: _task_to_batch(task=task, worker=worker, result=result), recorded, result
            ),
        )
        status = TaskStatus.PENDING if given_back else TaskStatus.RUNNING
        return TaskRunResult(task_id, status, ran=given_back is not None)
    if result.defer_s is not None:
        delay = while_lease_holds(
            lease,
            lambda: _marked(
                lambda: _task_defer(task=task, worker=worker, result=result), recorded, result
            ),
        )
        if delay is not None:
            return TaskRunResult(task_id, TaskStatus.PENDING, ran=True, retry_in=delay)
        result.defer_s = None  # not deferred after all: recorded as it stands
    final = result
    status = while_lease_holds(
        lease,
        lambda: _marked(
            lambda: _record_result(task=task, worker=worker, result=final, wall_s=wall_s),
            recorded,
            final,
            always=True,
        ),
    )
    if cached and not hit and status == TaskStatus.SUCCEEDED:
        cache.cache_entry_store(task=task, spec=spec, result=final, wall_s=wall_s)
    return TaskRunResult(task_id, status, ran=True)


def _marked(
    write: Callable[[], T],
    recorded: Callable[[GenerationResult], object] | None,
    result: GenerationResult,
    *,
    always: bool = False,
) -> T:
    """`write`, and in its transaction the caller's `recorded` mark when it wrote (a deferral
    that did not happen leaves the record to `_record_result`)."""
    if recorded is None:
        return write()
    with transaction.atomic():
        out = write()
        if always or out is not None:
            recorded(result)
        return out


def _db_release_during_io() -> None:
    """Give a pooled connection back while the provider call runs (seconds without a query), so
    a worker's pool serves hundreds of concurrent tasks with a few connections."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def task_spec_build(
    *, task: GenerationTask, worker: str, heartbeat: Callable[[], bool] | None = None
) -> TaskSpec:
    """What a run of the task asks of the LLM conversation: its kind, tier and model, the
    request and outline, the prompt context, a lease-renewing heartbeat (the task's own lease
    unless the caller holds another) and the deadline."""
    request, outline = job_models(task.job)
    tier = Tier(task.tier)
    other = Tier.SIMPLE if tier is Tier.COMPLEX else Tier.COMPLEX
    return TaskSpec(
        kind=task.task_kind,
        tier=tier,
        model=task.model or common.model_for(tier),
        prompt_version=task.prompt_version,
        request=request,
        outline=outline,
        context={
            **task_context(task.task_kind, task.key, request=request, outline=outline),
            "job_id": str(task.job_id),
        },
        heartbeat=heartbeat
        or (lambda: task_lease_renew(task_id=task.pk, worker=worker, run=task.runs)),
        deadline=time.monotonic() + settings.COURSEGEN_TASK_DEADLINE_S,
        fallback_model=common.model_for(other)
        if settings.COURSEGEN_BREAKER_FALLBACK_TIER
        else None,
        moderator=get_moderation_provider(),
        moderation_model=settings.COURSEGEN_MODERATION_MODEL,
        rank=call_rank(
            priority=task.job.priority,
            submitted_at=task.job.created_at.timestamp(),
            done_share=task.job.progress / 100,
        ),
    )


def job_models(job: CourseGenerationJob) -> tuple[CourseRequest, CourseOutline | None]:
    """The job's request and outline, validated. Every chord task of a job reads the same two;
    from a claim (`hotpath.claim_and_load` keeps the JSON as the database gave it) they are
    validated once per process and shared, read-only."""
    texts: dict[str, str] = getattr(job, "json_texts", {})
    request_text, outline_text = texts.get("request"), texts.get("outline")
    request = _request_of(request_text) if request_text else job.course_request
    if not job.outline:
        return request, None
    if outline_text:
        return request, _outline_of(outline_text)
    return request, CourseOutline.model_validate(job.outline)


@functools.lru_cache(maxsize=256)
def _request_of(text: str) -> CourseRequest:
    return CourseRequest.model_validate(json.loads(text))


@functools.lru_cache(maxsize=256)
def _outline_of(text: str) -> CourseOutline:
    return CourseOutline.model_validate(json.loads(text))


def task_lease_renew(*, task_id: int, worker: str, run: int | None = None) -> bool:
    """Extend our lease before another provider call; False if another run owns the task."""
    owned = GenerationTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, worker=worker)
    if run is not None:
        owned = owned.filter(runs=run)
    return bool(owned.update(lease_expires_at=db_now_plus(settings.COURSEGEN_TASK_LEASE_S)))


def _record_result(
    *, task: GenerationTask, worker: str, result: GenerationResult, wall_s: float
) -> str:
    if result.ok and result.moderation == "held" and task.kind == TaskKind.OUTLINE:
        # Nothing can be planned from an outline staff have not seen: the job fails instead.
        flagged = ", ".join(result.moderation_categories)
        result.error = f"the outline was flagged by moderation ({flagged})"
        result.data = None
    status = TaskStatus.SUCCEEDED if result.ok else TaskStatus.FAILED
    fields = {
        "output": result.data,
        "moderation": result.moderation,
        "moderation_categories": result.moderation_categories,
        "model": _model_used(task, result),
        "validation_errors": result.validation_errors,
        "error": result.error,
        "duration_ms": round(wall_s * 1000),
    }
    if not db.hand_written_sql():
        return _record_result_orm(
            task=task, worker=worker, result=result, status=status, fields=fields, wall_s=wall_s
        )
    # One statement records the ledger rows, the task's row (closed, or its counters when our
    # lease was lost) and the job's progress. It runs in a transaction with the rare follow-up (a
    # job closed meanwhile takes this run's cost into its totals): while_lease_holds retries the
    # whole write through a database error, so the statement must not have committed without
    # its follow-up, or the retry would add the run's usage and ledger rows a second time, and a
    # crash between the two would leave the job's totals short.
    with transaction.atomic():
        updated, job_running, status_now = hotpath.record_and_progress(
            task=task,
            worker=worker,
            now=timezone.now(),
            status=status,
            fields=fields,
            usage=ledger.usage_totals(result=result),
            attempts=ledger.attempt_dicts(task=task, result=result),
        )
        if not updated:
            ledger.job_totals_refresh_if_closed(job_id=task.job_id)
        elif not job_running:
            # The job was cancelled while this run was in flight: its totals take this run's cost.
            ledger.job_totals_refresh_if_cancelled(job_id=task.job_id)
    if not updated:
        return _lease_lost(task=task, worker=worker, status_now=status_now)
    _recorded(task=task, result=result, status=status, wall_s=wall_s)
    return status


@transaction.atomic
def _record_result_orm(
    *,
    task: GenerationTask,
    worker: str,
    result: GenerationResult,
    status: str,
    fields: dict[str, Any],
    wall_s: float,
) -> str:
    """The ORM version (databases other than PostgreSQL), in one transaction."""
    updated = _task_close(task=task, worker=worker, status=status, fields=fields, result=result)
    job_running = updated and job_refresh_progress(job_id=task.job_id)
    if updated and not job_running:
        # The job was cancelled while this run was in flight: its totals take this run's cost.
        ledger.job_totals_refresh_if_cancelled(job_id=task.job_id)
    if not updated:
        # Our lease expired and another run took the task over; its result stands. Our calls
        # were paid for all the same: they count in the task's and the job's totals.
        ledger.task_usage_add(task=task, result=result)
        return _lease_lost(task=task, worker=worker, status_now=None)
    _recorded(task=task, result=result, status=status, wall_s=wall_s)
    return status


def _lease_lost(*, task: GenerationTask, worker: str, status_now: str | None) -> str:
    logger.warning("task %s: lease lost by %s run %s, result discarded", task.pk, worker, task.runs)
    if status_now is not None:
        return status_now
    return str(GenerationTask.objects.values_list("status", flat=True).get(pk=task.pk))


def _recorded(
    *, task: GenerationTask, result: GenerationResult, status: str, wall_s: float
) -> None:
    """What follows a recorded result: the held-content alert and the task's log event."""
    if result.moderation == "held":
        task_held_alert(task=task, categories=result.moderation_categories)
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


def _model_used(task: GenerationTask, result: GenerationResult) -> str:
    """The model of the run's last generation call (a breaker may have switched it); moderation
    calls have their own model and do not count."""
    models = [a.model for a in result.attempts if a.kind != "moderation"]
    return models[-1] if models else task.model


def new_version_moderation(*, task: GenerationTask, result: GenerationResult) -> dict[str, Any]:
    """The task's moderation fields for a new version of its output (a regeneration, a replaced
    question): moderated anew, so a held one is held (and alerted) and a rejected task
    regenerated clean is published; an earlier review does not carry over."""
    if result.moderation == "held":
        task_held_alert(task=task, categories=result.moderation_categories)
    return {
        "moderation": result.moderation,
        "moderation_categories": result.moderation_categories,
        "moderation_reviewed_by": None,
        "moderation_reviewed_at": None,
    }


def task_held_alert(*, task: GenerationTask, categories: list[str]) -> None:
    flagged = ", ".join(categories)
    log_event(
        "moderation.output_held",
        f"{task.kind} {task.key} held for review: flagged for {flagged}",
        level="warning",
        job=task.job,
        task=task,
        data={"categories": categories},
    )
    alerts.content_flagged(
        subject=f"job:{task.job_id}",
        message=f"Job {task.job_id}: {task.kind} {task.key} was flagged by moderation ({flagged}) "
        "after one regeneration and is held for review (admin: held content)",
        data={"job_id": str(task.job_id), "task_id": task.pk, "categories": categories},
        organisation_id=task.job.organisation_id,
    )


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
        _owned(task, worker).update(
            status=status,
            lease_expires_at=None,
            finished_at=timezone.now(),
            **fields,
            **ledger.usage_increments(result=result),
        )
    )


DEFER_BASE_S = 1.0  # the first deferral's back-off; each further one doubles it (with jitter)


def defer_delay(*, defer_s: float | None, deferrals: int) -> float:
    """How long a task waits before its next try: what the provider (or its breaker) asked
    for, or an exponential back-off of the task's own deferrals if longer, at most
    COURSEGEN_TASK_DEFER_MAX_S. The jitter spreads the retries of many tasks deferred together."""
    backoff = DEFER_BASE_S * 2 ** min(deferrals, 16) * random.uniform(0.5, 1.0)
    return min(max(defer_s or 0.0, backoff, 0.5), settings.COURSEGEN_TASK_DEFER_MAX_S)


@transaction.atomic
def _task_defer(*, task: GenerationTask, worker: str, result: GenerationResult) -> float | None:
    """Give the task back (pending) to be sent again later: the provider is unavailable now.

    Deferrals are budgeted by time (COURSEGEN_TASK_DEFER_BUDGET_S since the first of this run of
    deferrals, on the database's clock), not by count, so an outage shorter than the budget is
    waited out however often the task is tried. None when the budget is spent (or the lease was
    lost): the caller records the result as it stands."""
    delay = defer_delay(defer_s=result.defer_s, deferrals=task.deferrals)
    budget = db_now_plus(-settings.COURSEGEN_TASK_DEFER_BUDGET_S)
    within_budget = Q(deferred_since__isnull=True) | Q(deferred_since__gt=budget)
    deferred = (
        _owned(task, worker)
        .filter(within_budget)
        .update(
            status=TaskStatus.PENDING,
            lease_expires_at=None,
            worker="",
            error=result.error,
            deferrals=F("deferrals") + 1,
            deferred_since=Coalesce(F("deferred_since"), Now()),
            dispatched_at=db_now_plus(delay),
            **ledger.usage_increments(result=result),
        )
    )
    if not deferred:
        if _owned(task, worker).exists():
            budget_s = settings.COURSEGEN_TASK_DEFER_BUDGET_S
            result.error = f"deferral budget of {budget_s:.0f}s spent: {result.error}"
        return None
    ledger.task_attempts_record(task=task, result=result)
    ledger.job_totals_refresh_if_cancelled(job_id=task.job_id)
    logger.warning("task %s deferred %.1fs: %s", task.pk, delay, result.error)
    return delay


@transaction.atomic
def _task_to_batch(*, task: GenerationTask, worker: str, result: GenerationResult) -> bool | None:
    """Give the task back (pending, no lease) while a repair of its batch answer waits for the
    next batch; the answers taken so far go in the ledger now (the next run replays them
    without recording them again). None when the lease was lost."""
    if not _owned(task, worker).update(
        status=TaskStatus.PENDING,
        lease_expires_at=None,
        worker="",
        error=result.error,
        **ledger.usage_increments(result=result),
    ):
        return None
    ledger.task_attempts_record(task=task, result=result)
    return True


def _task_finish(*, task: GenerationTask, worker: str, status: TaskStatus, error: str) -> None:
    _owned(task, worker).update(
        status=status, error=error, lease_expires_at=None, finished_at=timezone.now()
    )


def job_refresh_progress(*, job_id: UUID) -> bool:
    """Store the job's progress; whether the job was still running."""
    counts = GenerationTask.objects.filter(job_id=job_id).aggregate(
        total=Count("pk"), done=Count("pk", filter=Q(status=TaskStatus.SUCCEEDED))
    )
    # The outline alone is not the whole job: until tasks are planned, progress stays small.
    progress = 100 * counts["done"] // max(counts["total"], 1)
    return bool(
        CourseGenerationJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
            progress=progress
        )
    )
