"""What a run adds to the record: its attempts ledger rows, its usage on the task's counters,
and a job's totals over its tasks. The task runner, the finalize, question de-duplication and
regeneration all account for their provider calls through these."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

from django.db.models import F

from generation.llm import GenerationResult
from generation.llm_types import AttemptRecord
from generation.models import (
    JOB_TERMINAL,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    JudgeRun,
)


def task_attempts_record(*, task: GenerationTask, result: GenerationResult) -> None:
    """Insert one ledger row per provider call of the run, numbered after the task's earlier
    attempts. Every call is paid for, so it is kept whatever became of the run."""
    GenerationAttempt.objects.bulk_create(_attempt_rows(task, result))


def judge_attempts_record(*, judge_run: JudgeRun, result: GenerationResult) -> None:
    """The same for a judge run's calls (kind `judge`), numbered after its earlier ones."""
    rows = _attempt_rows(None, result, judge_run=judge_run, first=judge_run.attempts)
    GenerationAttempt.objects.bulk_create(rows)


def attempt_dicts(*, task: GenerationTask, result: GenerationResult) -> list[dict[str, Any]]:
    """The same rows' columns as plain dicts, for hand-written SQL (generation/hotpath.py, which
    writes their Decimals as JSON strings); not built through model instances (a chord task's
    hottest Python)."""
    return [_attempt_fields(a, task.attempts) for a in result.attempts]


def _attempt_rows(
    task: GenerationTask | None,
    result: GenerationResult,
    *,
    judge_run: JudgeRun | None = None,
    first: int | None = None,
) -> list[GenerationAttempt]:
    start = first if first is not None else (task.attempts if task else 0)
    return [
        GenerationAttempt(task=task, judge_run=judge_run, **_attempt_fields(a, start))
        for a in result.attempts
    ]


def _attempt_fields(a: AttemptRecord, start: int) -> dict[str, Any]:
    """One provider call's ledger columns, by GenerationAttempt's field names, numbered after
    `start` earlier attempts."""
    return {
        "number": start + a.number,
        "kind": a.kind,
        "part": a.part,
        "outcome": a.outcome,
        "model": a.model,
        "input_tokens": a.usage.input_tokens,
        "cached_tokens": a.usage.cached_tokens,
        "output_tokens": a.usage.output_tokens,
        "cost_usd": a.cost_usd,
        "latency_ms": a.latency_ms,
        "errors": a.errors,
        "saved_cost_usd": a.saved_cost_usd,
        "saved_ms": a.saved_ms,
        "batch": a.batch,
    }


def usage_totals(*, result: GenerationResult) -> dict[str, Any]:
    """What one run adds to the task's counters (the columns of the same names)."""
    return {
        "attempts": len(result.attempts),
        "input_tokens": result.total("input_tokens"),
        "cached_tokens": result.total("cached_tokens"),
        "output_tokens": result.total("output_tokens"),
        "cost_usd": result.cost_usd,
        "reask_cost_usd": result.reask_cost_usd,
    }


def usage_increments(*, result: GenerationResult) -> dict[str, Any]:
    """`usage_totals` as column updates (`F(column) + value`) for a task's update()."""
    return {column: F(column) + value for column, value in usage_totals(result=result).items()}


JOB_TOTALS = ("input_tokens", "cached_tokens", "output_tokens", "cost_usd", "reask_cost_usd")


def task_usage_add(*, task: GenerationTask, result: GenerationResult) -> None:
    """Count a run's usage apart from its result: a run that lost its task's lease (its calls
    are in the ledger and were paid for), or a pass that replaces part of a succeeded task's
    output. The usage goes on the task's counters, and the job's totals are summed again from
    the tasks if the job is closed (a finalize sums the tasks' counters before that). Call
    inside a transaction.

    The task's row is written first and the job's locked second, the order every task write
    takes: either a finalize that has not committed yet sums this task's new counters, or the
    job is already closed when its lock is granted and is totalled again here. Summed again,
    not incremented: the job's cost has 6 places, and adding a rounded increment to a rounded
    total drifts from the ledger's sum rounded once (`job_cost`)."""
    GenerationTask.objects.filter(pk=task.pk).update(**usage_increments(result=result))
    job_totals_refresh_if_closed(job_id=task.job_id)


def job_totals_refresh_if_closed(*, job_id: UUID) -> None:
    """The job's side of `task_usage_add`, after the task's row was written (the hand-written
    record does that part in its statement): a closed job is totalled again. Call inside a
    transaction."""
    # Lock whatever its status: a filter on status would skip a row a finalize holds.
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    if job.status in JOB_TERMINAL:
        job_totals_apply(job=job, tasks=list(job.tasks.all()))
        job.save(update_fields=[*JOB_TOTALS, "updated_at"])


def job_totals_refresh_if_cancelled(*, job_id: UUID) -> None:
    """A run of a cancelled job's task recorded its usage after the cancel totalled the job
    (a call in flight at the cancel is paid all the same): total the job again. Call after the
    task's row was written (in its transaction, or after it committed): the job's lock is taken
    second, as every task write takes it, so the cancel's own total either saw this row or is
    committed here."""
    job = CourseGenerationJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None or job.status != JobStatus.CANCELLED:
        return
    job_totals_apply(job=job, tasks=list(job.tasks.all()))
    job.save(update_fields=[*JOB_TOTALS, "updated_at"])


JOB_COST_QUANTUM = Decimal(10) ** -CourseGenerationJob._meta.get_field("cost_usd").decimal_places


def job_cost(total: Decimal) -> Decimal:
    """A job's cost from its tasks' (or its ledger rows') 8-place sum: at the job column's 6
    places, half rounded up. Rounded here, once, so PostgreSQL never rounds it when storing it
    (it rounds a half away from zero, Python's default context to even: the two disagreed on a
    sum ending in 50, `make chaos-rabbitmq`'s 8e-06) and every reader can round the same way."""
    return total.quantize(JOB_COST_QUANTUM, rounding=ROUND_HALF_UP)


def job_totals_apply(*, job: CourseGenerationJob, tasks: list[GenerationTask]) -> None:
    """Set the job's token and cost totals to the sum over its tasks (the caller saves)."""
    job.input_tokens = sum(t.input_tokens for t in tasks)
    job.cached_tokens = sum(t.cached_tokens for t in tasks)
    job.output_tokens = sum(t.output_tokens for t in tasks)
    job.cost_usd = job_cost(sum((t.cost_usd for t in tasks), Decimal(0)))
    job.reask_cost_usd = job_cost(sum((t.reask_cost_usd for t in tasks), Decimal(0)))
