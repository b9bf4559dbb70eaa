"""Regenerating one task of a finished course, on request, optionally with a teacher's
instruction appended to the task-specific part of the prompt. The output it had is kept as a
`GenerationTaskVersion` (so is the new one: the latest version is always the current output).
The attempts ledger and the job's totals are kept, questions are de-duplicated across the course
again (`services.job_dedupe_questions`) and the course re-assembles.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from generation import assembly, messages, services
from generation.llm import GenerationResult, generate
from generation.models import (
    CourseGenerationJob,
    GenerationTask,
    GenerationTaskVersion,
    JobStatus,
    TaskStatus,
)
from generation.prompts import PROMPT_VERSIONS
from generation.providers import Provider, get_provider
from generation.schemas import TaskKind
from generation.services import GenerationError
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


def _check_regenerable(task: GenerationTask) -> None:
    if task.kind == TaskKind.OUTLINE:
        raise GenerationError(
            "the outline cannot be regenerated on its own: every other task is built on it"
        )
    if task.job.status != JobStatus.SUCCEEDED:
        raise GenerationError(
            f"only tasks of a finished course can be regenerated; the job is {task.job.status}"
        )
    if task.status == TaskStatus.RUNNING:
        raise GenerationError("this task is being regenerated already")
    if task.status != TaskStatus.SUCCEEDED:
        raise GenerationError(f"the task has {task.status}")


def task_regenerate_enqueue(*, task_id: int, instruction: str = "", by: User) -> GenerationTask:
    """Check that the task can be regenerated now, then run it on a worker after commit."""
    regenerate_task = messages.task(messages.REGENERATE_TASK)
    with transaction.atomic():
        task = GenerationTask.objects.select_related("job").get(pk=task_id)
        _check_regenerable(task)
        transaction.on_commit(lambda: regenerate_task.delay(task_id, instruction, by.pk))
    return task


def task_regenerate(
    *, task_id: int, instruction: str = "", by: User, provider: Provider | None = None
) -> GenerationTask:
    """Re-run one task of a finished course, keep its previous output as a version, re-assemble
    the course. When the new output fails validation the previous one stays, with the error."""
    worker = f"regenerate:{services.worker_name()}"
    task, number = _regeneration_claim(task_id=task_id, worker=worker)
    spec = services.task_spec_build(task=task, worker=worker)
    # The new version number makes the offline simulator draw anew; real providers ignore it.
    spec = dataclasses.replace(
        spec, instruction=instruction, context={**spec.context, "variant": number}
    )
    started = time.monotonic()
    try:
        result = generate(spec, provider or get_provider())
    except Exception as exc:  # a bug must not leave the task claimed for ever
        logger.exception("regeneration of task %s crashed", task_id)
        result = GenerationResult(error=f"internal error: {type(exc).__name__}: {exc}")
    _regeneration_record(
        task=task,
        worker=worker,
        result=result,
        number=number,
        instruction=instruction,
        by=by,
        wall_s=time.monotonic() - started,
    )
    if result.ok:
        services.job_dedupe_questions(job_id=task.job_id, provider=provider, finished=True)
    job_reassemble(job_id=task.job_id)
    task.refresh_from_db()
    return task


@transaction.atomic
def _regeneration_claim(*, task_id: int, worker: str) -> tuple[GenerationTask, int]:
    """Lock and check the task, keep its current output as version 1 if it has no versions
    yet, and mark it running; return it with the number the new version will get."""
    task = GenerationTask.objects.select_for_update().select_related("job").get(pk=task_id)
    _check_regenerable(task)
    latest = task.versions.order_by("-number").first()
    if latest is None:
        latest = _version_create(
            task=task,
            number=1,
            output=task.output or {},
            usage=(task.input_tokens, task.cached_tokens, task.output_tokens),
            cost=task.cost_usd,
            instruction="",
            by=task.job.owner,
            at=task.finished_at or timezone.now(),
        )
    now = timezone.now()
    GenerationTask.objects.filter(pk=task.pk).update(
        status=TaskStatus.RUNNING,
        worker=worker,
        runs=F("runs") + 1,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=settings.COURSEGEN_TASK_LEASE_S),
    )
    return task, latest.number + 1


def _version_create(
    *,
    task: GenerationTask,
    number: int,
    output: dict[str, Any],
    usage: tuple[int, int, int],
    cost: Any,
    instruction: str,
    by: User | None,
    at: Any = None,
) -> GenerationTaskVersion:
    return GenerationTaskVersion.objects.create(
        task=task,
        number=number,
        output=output,
        model=task.model,
        prompt_version=PROMPT_VERSIONS[task.task_kind] if number > 1 else task.prompt_version,
        instruction=instruction,
        input_tokens=usage[0],
        cached_tokens=usage[1],
        output_tokens=usage[2],
        cost_usd=cost,
        created_by=by,
        created_at=at or timezone.now(),
    )


@transaction.atomic
def _regeneration_record(
    *,
    task: GenerationTask,
    worker: str,
    result: GenerationResult,
    number: int,
    instruction: str,
    by: User,
    wall_s: float,
) -> None:
    task.refresh_from_db(fields=["attempts"])
    services.task_attempts_record(task=task, result=result)
    changes: dict[str, Any] = {
        **services.usage_increments(result=result),
        "status": TaskStatus.SUCCEEDED,  # the previous output stands if the new one failed
        "duration_ms": round(wall_s * 1000),
        "lease_expires_at": None,
        "finished_at": timezone.now(),
    }
    if result.ok:
        usage = tuple(result.total(n) for n in ("input_tokens", "cached_tokens", "output_tokens"))
        _version_create(
            task=task,
            number=number,
            output=result.data or {},
            usage=usage,  # type: ignore[arg-type]
            cost=result.cost_usd,
            instruction=instruction,
            by=by,
        )
        changes |= {
            "output": result.data,
            "prompt_version": PROMPT_VERSIONS[task.task_kind],
            "validation_errors": [],
            "error": "",
        }
    else:
        changes |= {
            "validation_errors": result.validation_errors,
            "error": f"regeneration failed, the previous version stays: {result.error}",
        }
    GenerationTask.objects.filter(pk=task.pk, worker=worker).update(**changes)
    outcome = "regenerated" if result.ok else "regeneration_failed"
    log_event(
        f"task.{outcome}",
        f"{task.kind} {task.key} {outcome.replace('_', ' ')} (version {number}) by {by}",
        level="info" if result.ok else "warning",
        job=task.job,
        task=task,
        user=by,
        duration_ms=wall_s * 1000,
        data={"instruction": instruction, "attempts": len(result.attempts), "error": result.error},
    )


@transaction.atomic
def job_reassemble(*, job_id: UUID) -> CourseGenerationJob:
    """Re-total a finished job and re-assemble its course from the tasks' current outputs."""
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    tasks = list(job.tasks.all())
    services.job_totals_apply(job=job, tasks=tasks)
    fields = ["input_tokens", "cached_tokens", "output_tokens", "cost_usd", "reask_cost_usd"]
    if job.status == JobStatus.SUCCEEDED and all(t.status == TaskStatus.SUCCEEDED for t in tasks):
        course = assembly.assemble_course(job=job, tasks=tasks)
        if course != job.course:  # a failed regeneration keeps the course, and its score
            job.course = course
            services.job_evaluate(job=job, tasks=tasks)
            fields += ["course", "quality_score"]
            transaction.on_commit(lambda: services.quality_check(job=job))
    job.save(update_fields=[*fields, "updated_at"])
    return job
