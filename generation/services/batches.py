"""The batch poller (docs/batch.md): celery beat runs `batch_poll` every
COURSEGEN_BATCH_POLL_INTERVAL_S. Each run, every step on its own:

1. submit: queued requests, grouped by model, become a batch row, then one JSONL file (one line per
   request, its `custom_id`) uploaded with the Files API and a batch created with the Batches API;
2. poll: batches at the provider are retrieved; an ended one's output and error files are read
   and each line recorded on its request by `custom_id` (answered, failed, or unanswered);
3. apply: each answered request runs its task through the live path (`task_run`) with the line's
   answer as the first attempt: the same validation, repairs, moderation and ledger, fenced by
   the task's lease, and the request is marked applied in the transaction that records it;
4. retry: failed and unanswered requests go into the next batch or run live
   (COURSEGEN_BATCH_RETRY, COURSEGEN_BATCH_MAX_TRIES); a permanent failure goes live at once;
5. finish: a batch job whose outline is done is planned (its tasks queued for the next batch);
   one whose tasks all ended is finalized, by the same message a chord body sends.

Every step works from rows and claims them (a batch by its lease, a task by its lease, a request
by a conditional update), so a poller killed anywhere is resumed by the next run, and two pollers
never apply one line twice. A cancelled job's requests are cancelled, never applied.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID, uuid4

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from generation import messages
from generation.batch_models import BatchRequestStatus, BatchStatus
from generation.leases import db_now_plus
from generation.llm import BatchAnswer, BatchReplay, GenerationResult, first_request
from generation.models import (
    BatchRequest,
    CourseGenerationJob,
    GenerationTask,
    JobStatus,
    ProviderBatch,
    TaskStatus,
    Urgency,
)
from generation.providers import (
    BATCH_KEY,
    BatchLine,
    BatchLineResult,
    BatchState,
    CompletionRequest,
    InvalidOutputError,
    Provider,
    get_provider,
)
from generation.providers.batchfiles import (
    UNANSWERED_CODES,
    completion_from_body,
    request_dump,
    request_load,
)
from generation.schemas import TaskKind
from generation.services import batchowners, batchqueue, common, planning, runs
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.batches")

MAX_LINES = 50_000  # OpenAI's limit per batch file
STEP_ROWS = 500


@dataclass
class BatchPollReport:
    submitted: int = 0  # batches created at the provider
    lines: int = 0  # requests in them
    ended: int = 0  # batches whose files were read
    applied: int = 0  # answers taken by their tasks
    retried_batch: int = 0  # failed or unanswered requests queued again
    retried_live: int = 0  # failed or unanswered requests sent live
    woken: int = 0  # judge runs and regenerations woken to take their answers
    cancelled: int = 0  # requests of cancelled jobs (or closed runs) dropped
    finalized: int = 0  # batch jobs sent to finalize
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def batch_poll(*, provider: Provider | None = None, worker: str | None = None) -> BatchPollReport:
    provider = provider or get_provider()
    worker = worker or common.worker_name()
    report = BatchPollReport()

    def step(name: str, run: Callable[[], None]) -> None:
        try:
            run()
        except Exception:  # one failing step must not keep the others from running
            logger.exception("batch poll: %s failed", name)
            report.errors += 1

    step("submit", lambda: _submit_queued(provider, worker, report))
    step("poll", lambda: _poll_submitted(provider, worker, report))
    step("apply", lambda: _apply_answered(provider, worker, report))
    step("retry", lambda: _retry_unsuccessful(report))
    step("wake", lambda: _wake_owners(report))
    step("finish", lambda: _finish_jobs(report))
    if any(report.as_dict().values()):
        logger.info("batch poll: %s", report.as_dict())
    return report


# --- 1. submit -----------------------------------------------------------------------------------
def _claim(batch_id: int, worker: str) -> bool:
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=Now())
    return bool(
        ProviderBatch.objects.filter(free, pk=batch_id).update(
            worker=worker, lease_expires_at=db_now_plus(settings.COURSEGEN_BATCH_LEASE_S)
        )
    )


def _release(batch_id: int, worker: str, **fields: object) -> None:
    ProviderBatch.objects.filter(pk=batch_id, worker=worker).update(lease_expires_at=None, **fields)


def _submit_queued(provider: Provider, worker: str, report: BatchPollReport) -> None:
    # Batches a killed poller left half-submitted first: their lines are already theirs.
    resumed = ProviderBatch.objects.filter(status=BatchStatus.SUBMITTING)
    for batch_id in list(resumed.values_list("pk", flat=True)[:STEP_ROWS]):
        if _claim(batch_id, worker):
            _leased(
                batch_id,
                worker,
                report,
                lambda b: _submit(b, provider, worker, report, resumed=True),
            )
    for batch_id in _new_batches(provider, worker):
        _leased(batch_id, worker, report, lambda b: _submit(b, provider, worker, report))


def _leased(
    batch_id: int, worker: str, report: BatchPollReport, work: Callable[[int], None]
) -> None:
    """Work on a claimed batch; an error gives the batch back at once (the next run tries
    again) where a killed poller's lease has to run out."""
    try:
        work(batch_id)
    except Exception as exc:
        logger.exception("batch %s: %s", batch_id, exc)
        report.errors += 1
        _release(batch_id, worker, error=f"{type(exc).__name__}: {exc}"[:2000])


def _new_batches(provider: Provider, worker: str) -> list[int]:
    """Group the queued requests by model into new batch rows, claimed by this poller."""
    created = []
    with transaction.atomic():
        rows = list(
            BatchRequest.objects.filter(status=BatchRequestStatus.QUEUED, batch__isnull=True)
            .select_for_update(skip_locked=True)
            .values_list("pk", "model")[:MAX_LINES]
        )
        by_model: dict[str, list[int]] = defaultdict(list)
        for pk, model in rows:
            by_model[model].append(pk)
        for model, ids in by_model.items():
            batch = ProviderBatch.objects.create(
                provider=provider.name,
                model=model,
                client_key=uuid4().hex,
                worker=worker,
                lease_expires_at=db_now_plus(settings.COURSEGEN_BATCH_LEASE_S),
                request_total=len(ids),
            )
            BatchRequest.objects.filter(pk__in=ids).update(batch=batch)
            created.append(batch.pk)
    return created


def _submit(
    batch_id: int,
    provider: Provider,
    worker: str,
    report: BatchPollReport,
    *,
    resumed: bool = False,
) -> None:
    """Upload and create a claimed `submitting` batch. A row an earlier poller left behind
    (`resumed`) may already be at the provider: its file and its batch are looked up by the
    row's client key first and adopted, so a kill between the provider's answer and its
    commit neither loses a batch nor makes a second one."""
    batch = ProviderBatch.objects.get(pk=batch_id)
    requests = list(
        BatchRequest.objects.filter(batch=batch, status=BatchRequestStatus.QUEUED).select_related(
            "task__job"
        )
    )
    found = _adoptable(batch, provider) if resumed and batch.client_key else None
    if not requests and found is None:  # every job in it was cancelled meanwhile
        _release(batch_id, worker, status=BatchStatus.ENDED, ended_at=timezone.now())
        return
    if found is None and not batch.input_file_id:
        name = _file_name(batch)
        since = batch.created_at.timestamp() - CLOCK_SKEW_S
        file_id = (provider.batch_file_find(name, since=since) if resumed else None) or ""
        if not file_id:
            lines = [BatchLine(r.custom_id, _line_request(r, worker, provider)) for r in requests]
            file_id = provider.batch_upload(lines, filename=name)
        batch.input_file_id = file_id
        ProviderBatch.objects.filter(pk=batch_id).update(input_file_id=file_id)
    state = found or provider.batch_create(
        input_file_id=batch.input_file_id,
        metadata={"coursegen_batch": str(batch_id), BATCH_KEY: batch.client_key},
    )
    if found is not None:
        logger.warning("batch %s: adopted %s, created by a poller that died", batch_id, found.id)
        log_event("batch.adopted", f"batch {batch_id} adopted {found.id}", level="warning")
    with transaction.atomic():
        _release(
            batch_id,
            worker,
            status=BatchStatus.SUBMITTED,
            provider_batch_id=state.id,
            provider_status=state.status,
            request_total=len(requests),
            submitted_at=timezone.now(),
        )
        BatchRequest.objects.filter(batch=batch, status=BatchRequestStatus.QUEUED).update(
            status=BatchRequestStatus.SUBMITTED
        )
    report.submitted += 1
    report.lines += len(requests)
    logger.info("batch %s submitted as %s: %s lines", batch_id, state.id, len(requests))


CLOCK_SKEW_S = 300.0  # the provider's clock against ours, when listing what was made since


def _file_name(batch: ProviderBatch) -> str:
    return f"coursegen-batch-{batch.pk}-{batch.client_key}.jsonl"


def _adoptable(batch: ProviderBatch, provider: Provider) -> BatchState | None:
    """The provider's batch made for this row by a poller killed before it recorded it."""
    return provider.batch_find(batch.client_key, since=batch.created_at.timestamp() - CLOCK_SKEW_S)


def _line_request(request: BatchRequest, worker: str, provider: Provider) -> CompletionRequest:
    """What the line asks: a repair's stored request, or the task's first request."""
    if request.request is not None:
        return request_load(dict(request.request))
    spec = runs.task_spec_build(task=request.task, worker=worker, heartbeat=lambda: True)
    return first_request(spec, provider)


# --- 2. poll -------------------------------------------------------------------------------------
def _poll_submitted(provider: Provider, worker: str, report: BatchPollReport) -> None:
    submitted = ProviderBatch.objects.filter(status=BatchStatus.SUBMITTED).order_by("polled_at")
    for batch_id in list(submitted.values_list("pk", flat=True)[:STEP_ROWS]):
        if _claim(batch_id, worker):  # else another poller has it
            _leased(batch_id, worker, report, lambda b: _poll_one(b, provider, worker, report))


def _poll_one(batch_id: int, provider: Provider, worker: str, report: BatchPollReport) -> None:
    batch = ProviderBatch.objects.get(pk=batch_id)
    if batch.provider_status not in ("cancelling", "cancelled") and not _has_live_requests(batch):
        provider.batch_cancel(batch.provider_batch_id)  # its jobs were cancelled: stop paying
    state = provider.batch_retrieve(batch.provider_batch_id)
    fields: dict[str, object] = {
        "provider_status": state.status,
        "request_completed": state.completed,
        "request_failed": state.failed,
        "output_file_id": state.output_file_id or "",
        "error_file_id": state.error_file_id or "",
        "polled_at": timezone.now(),
        "error": state.errors,
    }
    if not state.ended:
        _release(batch_id, worker, **fields)
        return
    results = provider.batch_results(state) if state.status != "failed" else []
    with transaction.atomic():
        _record_lines(batch, results, failed_batch=state.errors if state.status == "failed" else "")
        _release(batch_id, worker, status=BatchStatus.ENDED, ended_at=timezone.now(), **fields)
    report.ended += 1


def _has_live_requests(batch: ProviderBatch) -> bool:
    """Whether anyone still waits for the batch: a running job's task, or an open judge run
    or regeneration."""
    course_task = Q(
        judge_run__isnull=True, regeneration__isnull=True, task__job__status=JobStatus.RUNNING
    )
    return (
        batch.requests.filter(status=BatchRequestStatus.SUBMITTED)
        .filter(course_task | batchowners.owner_still_wants())
        .exists()
    )


def _record_lines(
    batch: ProviderBatch, results: list[BatchLineResult], *, failed_batch: str
) -> None:
    """Each line on its request, by custom_id; a request with no line went unanswered. Only
    requests still `submitted` take a line: a repeated read changes nothing."""
    waiting = {r.custom_id: r for r in batch.requests.filter(status=BatchRequestStatus.SUBMITTED)}
    changed = []
    now = timezone.now()
    for line in results:
        request = waiting.pop(line.custom_id, None)
        if request is None:
            continue  # not ours, or recorded already
        request.answered_at, request.response = now, dict(line.response or {}) or None
        if line.completion is not None or isinstance(line.error, InvalidOutputError):
            request.status = BatchRequestStatus.ANSWERED  # invalid text is re-asked, like live
        else:
            unanswered = line.code in UNANSWERED_CODES
            request.status = (
                BatchRequestStatus.UNANSWERED if unanswered else BatchRequestStatus.FAILED
            )
            request.error_code, request.error = line.code, str(line.error)[:2000]
        changed.append(request)
    for request in waiting.values():
        request.answered_at = now
        if failed_batch:
            request.status, request.error_code = BatchRequestStatus.FAILED, "batch_failed"
            request.error = failed_batch[:2000]
        else:
            request.status, request.error_code = BatchRequestStatus.UNANSWERED, "no_line"
            request.error = "the batch ended without a line for this request"
        changed.append(request)
    BatchRequest.objects.bulk_update(
        changed, ["status", "response", "error_code", "error", "answered_at"]
    )


# --- 3. apply ------------------------------------------------------------------------------------
def _apply_answered(provider: Provider, worker: str, report: BatchPollReport) -> None:
    answered = BatchRequest.objects.filter(
        status=BatchRequestStatus.ANSWERED, judge_run__isnull=True, regeneration__isnull=True
    ).order_by("pk")  # a judge run's or a regeneration's answer is its own to take (wake)
    for request_id in list(answered.values_list("pk", flat=True)[:STEP_ROWS]):
        report.applied += _apply(request_id, provider, worker, report)


def _apply(request_id: int, provider: Provider, worker: str, report: BatchPollReport) -> bool:
    request = BatchRequest.objects.select_related("task__job").get(pk=request_id)
    task = request.task
    if task.job.status != JobStatus.RUNNING or task.status in (
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
    ):
        # A cancelled job's answer is never applied; nor is a line for a task that ended.
        report.cancelled += _close(
            request_id, BatchRequestStatus.CANCELLED, f"job {task.job.status}"
        )
        return False

    def taken(outcome: GenerationResult) -> None:
        if outcome.batch_request is not None or outcome.defer_s is not None:
            _continue(request, outcome)
        else:
            _close(request_id, BatchRequestStatus.APPLIED, "")

    result = runs.task_run(
        task_id=task.pk, worker=worker, provider=provider, batch=_replay(request), recorded=taken
    )
    if not result.ran:
        return False  # another run holds the task (its lease); the next poll looks again
    if task.kind == TaskKind.OUTLINE and result.status != TaskStatus.PENDING:
        planning.job_after_outline(job_id=task.job_id, detail=str(result))
    return True


def _bodies(request: BatchRequest) -> list[dict[str, Any]]:
    """The response bodies this request's run takes, in order: the earlier lines' of the run
    (replayed), then its own (none for a live continuation)."""
    own = [] if request.live else [dict(request.response or {})]
    return [dict(body) for body in request.prior or []] + own


def _replay(request: BatchRequest) -> BatchReplay:
    by_batch = settings.COURSEGEN_BATCH_REPAIR == "batch" and not request.live
    answers = tuple(_answer(body) for body in _bodies(request))
    recorded = len(request.prior or [])
    return BatchReplay(answers=answers, recorded=recorded, repairs_by_batch=by_batch)


def _answer(body: dict[str, Any]) -> BatchAnswer:
    try:
        return completion_from_body(body, provider="batch")
    except InvalidOutputError as exc:
        return exc


def _continue(request: BatchRequest, outcome: GenerationResult) -> None:
    """The task's run goes on in a new request (in the transaction that gave the task back):
    a repair of the answers so far into the next batch, or, when a live repair found the
    provider down, a live continuation the next poll applies. Either replays these answers
    from their bodies, paid for once (they are in the ledger now)."""
    _close(request.pk, BatchRequestStatus.CONTINUED, outcome.error[:2000])
    batchqueue.batch_request_continue(
        task_id=request.task_id,
        prior=_bodies(request),
        request=request_dump(outcome.batch_request) if outcome.batch_request else None,
        model=outcome.batch_request.model if outcome.batch_request else request.model,
    )


def _close(request_id: int, status: str, error: str) -> int:
    """Close an open request once: the conditional update is the fence."""
    return BatchRequest.objects.filter(
        pk=request_id,
        status__in=[BatchRequestStatus.ANSWERED, BatchRequestStatus.QUEUED],
    ).update(status=status, error=error, finished_at=timezone.now())


# --- 4. retry ------------------------------------------------------------------------------------
def _retry_unsuccessful(report: BatchPollReport) -> None:
    unsuccessful = BatchRequest.objects.filter(
        status__in=[BatchRequestStatus.FAILED, BatchRequestStatus.UNANSWERED]
    ).order_by("pk")
    for request_id in list(unsuccessful.values_list("pk", flat=True)[:STEP_ROWS]):
        _retry(request_id, report)


@transaction.atomic
def _retry(request_id: int, report: BatchPollReport) -> None:
    request = (
        BatchRequest.objects.select_for_update(skip_locked=True)
        .filter(
            pk=request_id, status__in=[BatchRequestStatus.FAILED, BatchRequestStatus.UNANSWERED]
        )
        .select_related("task__job")
        .first()
    )
    if request is None:
        return  # another poller has it
    if request.judge_run_id is not None or request.regeneration_id is not None:
        _retry_owner(request, report)
        return
    task = request.task
    if task.job.status != JobStatus.RUNNING or task.status != TaskStatus.PENDING:
        request.status = BatchRequestStatus.CANCELLED
        request.save(update_fields=["status"])
        report.cancelled += 1
        return
    request.status, request.finished_at = BatchRequestStatus.RETRIED, timezone.now()
    request.save(update_fields=["status", "finished_at"])
    tries = BatchRequest.objects.filter(task=task).count()
    permanent = request.error_code.startswith("http_4") and request.error_code != "http_429"
    by_batch = (
        settings.COURSEGEN_BATCH_RETRY == "batch"
        and tries < settings.COURSEGEN_BATCH_MAX_TRIES
        and not permanent
    )
    if request.request is not None:  # a repair's line: the run goes on from the same answers
        batchqueue.batch_request_continue(
            task_id=task.pk,
            prior=list(request.prior or []),
            request=dict(request.request) if by_batch else None,
            model=request.model,
        )
    elif by_batch:
        batchqueue.batch_requests_queue(task_ids=[task.pk])
    else:
        _send_live(task)
    if by_batch:
        report.retried_batch += 1
    else:
        report.retried_live += 1


def _retry_owner(request: BatchRequest, report: BatchPollReport) -> None:
    """A judge run's or a regeneration's failed or unanswered line: its line again in the next
    batch, or a live continuation its run makes when woken; nothing if the run has closed."""
    wanted = BatchRequest.objects.filter(batchowners.owner_still_wants(), pk=request.pk)
    if not wanted.exists():
        request.status, request.finished_at = BatchRequestStatus.CANCELLED, timezone.now()
        request.save(update_fields=["status", "finished_at"])
        report.cancelled += 1
        return
    request.status, request.finished_at = BatchRequestStatus.RETRIED, timezone.now()
    request.save(update_fields=["status", "finished_at"])
    permanent = request.error_code.startswith("http_4") and request.error_code != "http_429"
    by_batch = (
        settings.COURSEGEN_BATCH_RETRY == "batch"
        and batchowners.owner_tries(request) < settings.COURSEGEN_BATCH_MAX_TRIES
        and not permanent
    )
    batchowners.owner_request_queue(
        task_id=request.task_id,
        judge_run_id=request.judge_run_id,
        regeneration_id=request.regeneration_id,
        request=dict(request.request or {}),
        live=not by_batch,
    )
    if by_batch:
        report.retried_batch += 1
    else:
        report.retried_live += 1


def _send_live(task: GenerationTask, *, countdown: float = 0.0) -> None:
    """Run the task live: its message after commit; the reconciler re-sends it if lost."""
    GenerationTask.objects.filter(pk=task.pk, status=TaskStatus.PENDING).update(
        dispatched_at=db_now_plus(countdown)
    )
    job_id, priority = task.job_id, task.job.priority

    def send() -> None:
        at = messages.broker_priority(priority)
        if task.kind == TaskKind.OUTLINE:
            messages.task(messages.RUN_OUTLINE).apply_async(
                args=(str(job_id),), priority=at, countdown=countdown
            )
        else:
            messages.task(messages.RUN_TASK).apply_async(
                args=(task.pk,), priority=at, countdown=countdown
            )

    transaction.on_commit(send)
    log_event(
        "batch.live",
        f"{task.kind} {task.key} runs live after its batch try",
        level="warning",
        job=task.job,
        task=task,
    )


# --- 5. wake -------------------------------------------------------------------------------------
def _wake_owners(report: BatchPollReport) -> None:
    """Judge runs and regenerations with an answered line (or a live continuation): their own
    message, so the run takes the answer under its lease. A repeated wake finds the run
    claimed or the line taken; a lost one is sent again by the reconciler. A line whose run
    has closed meanwhile is cancelled, never applied."""
    answered = BatchRequest.objects.filter(
        batchowners.owner_requests(), status=BatchRequestStatus.ANSWERED
    ).order_by("pk")
    rows = answered.values_list(
        "pk", "judge_run_id", "judge_run__status", "regeneration_id", "regeneration__status"
    )
    for request_id, run_id, run_status, regeneration_id, regeneration_status in list(
        rows[:STEP_ROWS]
    ):
        status = run_status if run_id is not None else regeneration_status
        if status not in ("pending", "running"):
            report.cancelled += _close(request_id, BatchRequestStatus.CANCELLED, f"{status}")
        elif status == "pending":
            _send_wake(run_id, regeneration_id)
            report.woken += 1


def _send_wake(run_id: int | None, regeneration_id: int | None) -> None:
    if run_id is not None:
        messages.task(messages.JUDGE_LESSON).apply_async(
            args=(run_id,), priority=messages.judge_priority()
        )
        return
    assert regeneration_id is not None
    priority = (
        CourseGenerationJob.objects.filter(tasks__regeneration_requests__pk=regeneration_id)
        .values_list("priority", flat=True)
        .first()
    )
    messages.task(messages.REGENERATE_TASK).apply_async(
        args=(regeneration_id,), priority=messages.broker_priority(priority or 5)
    )


# --- 6. finish -----------------------------------------------------------------------------------
def _finish_jobs(report: BatchPollReport) -> None:
    """Batch jobs whose tasks all ended (none pending, running, or in a batch): finalized by
    the message a chord body sends; job_finalize is idempotent and leased."""
    open_tasks = Q(tasks__status__in=[TaskStatus.PENDING, TaskStatus.RUNNING])
    done = (
        CourseGenerationJob.objects.filter(
            status=JobStatus.RUNNING, urgency=Urgency.BATCH, chord_dispatched_at__isnull=False
        )
        .exclude(open_tasks)
        .values_list("pk", flat=True)[:STEP_ROWS]
    )
    for job_id in list(done):
        _send_finalize(job_id)
        report.finalized += 1


def _send_finalize(job_id: UUID) -> None:
    messages.task(messages.FINALIZE_JOB).apply_async(
        args=(str(job_id),), priority=messages.housekeeping_priority()
    )
