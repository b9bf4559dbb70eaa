"""Tasks of batch jobs wait for the next batch as request rows (docs/batch.md): one row per try,
its `custom_id` the line's id at the provider. The poller (`batches`) submits, polls and applies
them; this module only queues, so planning and the controls can use it without a cycle."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from django.db.models import Count

from generation.batch_models import BATCH_REQUEST_OPEN, BatchRequestStatus
from generation.models import (
    BatchRequest,
    GenerationTask,
    TaskStatus,
)
from generation.schemas import TaskKind


def batch_requests_queue(*, task_ids: Iterable[int]) -> int:
    """Queue each task's next try for the next batch; a task with an open request keeps it
    (the unique constraint on open requests). Returns how many were queued."""
    tasks = list(
        GenerationTask.objects.filter(pk__in=list(task_ids))
        .annotate(tries=Count("batch_requests"))
        .values_list("pk", "model", "tries")
    )
    rows = [
        BatchRequest(
            task_id=pk, number=tries + 1, custom_id=f"task-{pk}-try-{tries + 1}", model=model
        )
        for pk, model, tries in tasks
    ]
    created = BatchRequest.objects.bulk_create(rows, ignore_conflicts=True)
    return len(created)


def batch_request_continue(
    *, task_id: int, prior: list[dict[str, Any]], request: dict[str, Any] | None, model: str
) -> BatchRequest:
    """The task's run goes on in a new request: `request` (a repair) waits for the next batch,
    or, without one, the poller continues the run with live calls (`live`, answered at once).
    `prior`: the answers the run took so far, replayed before the new one."""
    number = BatchRequest.objects.filter(task_id=task_id).count() + 1
    return BatchRequest.objects.create(
        task_id=task_id,
        number=number,
        custom_id=f"task-{task_id}-try-{number}",
        model=model,
        request=request,
        prior=prior,
        live=request is None,
        status=BatchRequestStatus.QUEUED if request is not None else BatchRequestStatus.ANSWERED,
    )


def outline_to_batch(*, task: GenerationTask) -> bool:
    """A batch job's outline goes into a batch the first time; True while it waits there.
    False once its batch tries are over: the outline then runs live (its retry went live)."""
    requests = BatchRequest.objects.filter(task=task)
    if requests.filter(status__in=BATCH_REQUEST_OPEN).exists():
        return True
    if requests.exists() or task.status != TaskStatus.PENDING:
        return False
    batch_requests_queue(task_ids=[task.pk])
    return True


def job_batch_requests_cancel(*, job_id: UUID, reason: str) -> int:
    """A cancelled job's requests not yet in a batch are dropped; those at the provider are
    not applied when they come back (the poller checks the job)."""
    return BatchRequest.objects.filter(
        task__job_id=job_id, status=BatchRequestStatus.QUEUED
    ).update(status=BatchRequestStatus.CANCELLED, error=reason)


def job_pending_to_batch(*, job_id: UUID) -> int:
    """Every pending task of a planned batch job (the outline aside) into the next batch."""
    pending = GenerationTask.objects.filter(job_id=job_id, status=TaskStatus.PENDING).exclude(
        kind=TaskKind.OUTLINE
    )
    return batch_requests_queue(task_ids=pending.values_list("pk", flat=True))
