"""Judge runs and regenerations by batch (docs/batch.md#judge-runs-and-regenerations).

Besides a batch job's tasks, the judge's verdicts (COURSEGEN_BATCH_JUDGE) and low-priority
regenerations (COURSEGEN_BATCH_REGENERATIONS) may go by batch. Such a run, where its first call
would be, queues one request row instead (its line: exactly the request that call would send,
kept in `request`), gives itself back and returns. The poller submits the line with the others,
records its answer by `custom_id`, and wakes the run (its own Celery message; the reconciler
sends it again if it is lost). The run, claimed under its lease, takes the answer as its first
call's (validated, repaired live, moderated, one ledger row at the batch price) and marks the
request applied in the transaction that records it: an answer is taken once, whatever the
deliveries. A line that fails or goes unanswered is tried again in the next batch or live, by
the same settings as a task's (COURSEGEN_BATCH_RETRY, COURSEGEN_BATCH_MAX_TRIES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from generation.batch_models import BATCH_REQUEST_OPEN, BatchRequestStatus, Urgency
from generation.llm import BatchReplay
from generation.models import (
    REGENERATION_OPEN,
    BatchRequest,
    CourseGenerationJob,
    JudgeRunStatus,
    Priority,
    RegenerationRequest,
    RegenerationSource,
)
from generation.providers import CompletionRequest, InvalidOutputError
from generation.providers.batchfiles import completion_from_body, request_dump

JUDGE_OPEN = (JudgeRunStatus.PENDING, JudgeRunStatus.RUNNING)
WAITING = (BatchRequestStatus.QUEUED, BatchRequestStatus.SUBMITTED)


# --- What goes by batch ------------------------------------------------------------------------
def judge_by_batch(*, job: CourseGenerationJob) -> bool:
    mode = settings.COURSEGEN_BATCH_JUDGE
    return mode == "all" or (mode == "batch" and job.urgency == Urgency.BATCH)


def regeneration_by_batch(*, request: RegenerationRequest) -> bool:
    """The judge's regenerations (no one waits for them) with "judge" or "low"; with "low",
    people's too when the course is of low priority or was itself made by batch."""
    mode = settings.COURSEGEN_BATCH_REGENERATIONS
    if mode == "off":
        return False
    if request.source == RegenerationSource.JUDGE:
        return True
    job = request.task.job
    return mode == "low" and (job.priority >= Priority.LOW or job.urgency == Urgency.BATCH)


# --- A run and its line --------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """Where a run stands with the Batch API: `waiting` for its line, or `answered` (a line's
    answer, or a live continuation after failed lines) to take; neither: call or queue."""

    answered: BatchRequest | None = None
    waiting: bool = False


def _owner(judge_run_id: int | None, regeneration_id: int | None) -> QuerySet[BatchRequest]:
    if (judge_run_id is None) == (regeneration_id is None):
        raise ValueError("a request belongs to a judge run or to a regeneration")
    if judge_run_id is not None:
        return BatchRequest.objects.filter(judge_run_id=judge_run_id)
    return BatchRequest.objects.filter(regeneration_id=regeneration_id)


def owner_line(*, judge_run_id: int | None = None, regeneration_id: int | None = None) -> Line:
    found = _owner(judge_run_id, regeneration_id).filter(status__in=BATCH_REQUEST_OPEN).first()
    if found is None:
        return Line()
    if found.status == BatchRequestStatus.ANSWERED:
        return Line(answered=found)
    return Line(waiting=True)


def owner_request_queue(
    *,
    task_id: int,
    request: CompletionRequest | dict[str, Any],
    judge_run_id: int | None = None,
    regeneration_id: int | None = None,
    live: bool = False,
) -> BatchRequest:
    """The run's next line (queued for the next batch), or with `live` a continuation the run
    makes with live calls (answered at once: the poller wakes the run for it)."""
    body = request if isinstance(request, dict) else request_dump(request)
    number = _owner(judge_run_id, regeneration_id).count() + 1
    prefix = f"judge-{judge_run_id}" if judge_run_id is not None else f"regen-{regeneration_id}"
    return BatchRequest.objects.create(
        task_id=task_id,
        judge_run_id=judge_run_id,
        regeneration_id=regeneration_id,
        number=number,
        custom_id=f"{prefix}-try-{number}",
        model=str(body["model"]),
        request=body,
        live=live,
        status=BatchRequestStatus.ANSWERED if live else BatchRequestStatus.QUEUED,
    )


def owner_tries(request: BatchRequest) -> int:
    """The owner's lines since its last applied one: this call's tries so far."""
    rows = _owner(request.judge_run_id, request.regeneration_id)
    last = rows.filter(status=BatchRequestStatus.APPLIED).order_by("-pk").first()
    return rows.filter(pk__gt=last.pk if last else 0, live=False).count()


def owner_replay(line: BatchRequest) -> BatchReplay | None:
    """The answer the run takes as its first call's; None for a live continuation. Repairs of
    it are live calls."""
    if line.live:
        return None
    try:
        answer: Any = completion_from_body(dict(line.response or {}), provider="batch")
    except InvalidOutputError as exc:  # re-asked, like invalid text from a live call
        answer = exc
    return BatchReplay(answers=(answer,), recorded=0, repairs_by_batch=False)


def owner_line_take(*, request_id: int) -> bool:
    """Inside the transaction that records the run, under its lease: True for the one run that
    takes this answer (the conditional update is the fence)."""
    return bool(
        BatchRequest.objects.filter(pk=request_id, status=BatchRequestStatus.ANSWERED).update(
            status=BatchRequestStatus.APPLIED, finished_at=timezone.now()
        )
    )


def owner_still_wants() -> Q:
    """Requests whose judge run or regeneration is still open (their answers are wanted)."""
    return Q(judge_run__status__in=JUDGE_OPEN) | Q(regeneration__status__in=REGENERATION_OPEN)


def owner_requests() -> Q:
    return Q(judge_run__isnull=False) | Q(regeneration__isnull=False)


def waiting_statuses() -> tuple[str, ...]:
    return tuple(WAITING)


def waiting_for_batch() -> Q:
    """For the reconciler: a judge run or regeneration with a line queued or at the provider
    is the poller's; it wakes it when the line is answered."""
    return Q(batch_requests__status__in=WAITING)


# A run given this stops where its first call would be, with that call's request in its result
# (`batch_request`): the line to queue. It calls nothing and pays nothing.
ASK_FIRST = BatchReplay(answers=(), recorded=0, repairs_by_batch=True)
