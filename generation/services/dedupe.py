"""Near-duplicate questions across a course. Assessments run in parallel and cannot see each
other, so at finalize (and after a regeneration) the questions are compared across the course,
and only the later question of each near-duplicate pair is regenerated (a request for that one
question), then merged into its assessment.

The pass runs under its caller's lease (the job's finalize lease, or a regeneration request's),
which `holds` renews and checks: it is never a task's own claim. A succeeded task stays
succeeded while one of its questions is replaced, so a caller killed mid-pass leaves no task
for the reconciler to run again from scratch; the next finalize redoes the pass."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Case, JSONField, When

from generation.checks import Duplicate, course_duplicates, is_near_duplicate
from generation.field_errors import FieldError, public_error
from generation.llm import GenerationResult, regenerate_part
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus
from generation.providers import Provider, get_provider
from generation.schemas import TaskKind
from generation.services import common, ledger, runs
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


def job_dedupe_questions(
    *,
    job_id: UUID,
    provider: Provider | None = None,
    finished: bool = False,
    holds: Callable[[], bool] = lambda: True,
) -> int:
    """Regenerate the later question of every near-duplicate pair across the course's
    assessments; return how many were found. Runs when every task has succeeded (on a running
    job at finalize, or on a finished one after a regeneration when `finished`). `holds`
    renews the caller's lease and says whether it still holds it: the pass stops when not."""
    job = CourseGenerationJob.objects.only("status", "request").get(pk=job_id)
    wanted = JobStatus.SUCCEEDED if finished else JobStatus.RUNNING
    if job.status != wanted:
        return 0
    # Every task's status, and the assessments' outputs only: finalize reads the whole rows
    # again under its lock, so the pass does not parse the lessons' outputs a first time.
    rows = list(
        job.tasks.values_list(
            "key",
            "status",
            Case(When(kind=TaskKind.ASSESSMENT, then="output"), output_field=JSONField()),
        ).order_by()
    )
    if any(status != TaskStatus.SUCCEEDED for _, status, _ in rows):
        return 0
    assessments = sorted(
        ((key, output or {}) for key, _, output in rows if output is not None),
        key=lambda row: _reading_order(row[0]),
    )
    duplicates = course_duplicates(assessments, topic=job.course_request.topic)
    for duplicate in duplicates:
        if not holds():
            logger.warning("job %s: lease lost; question de-duplication stopped", job_id)
            break
        _dedupe_one(
            task=GenerationTask.objects.select_related("job").get(
                job_id=job_id, kind=TaskKind.ASSESSMENT, key=duplicate.key
            ),
            duplicate=duplicate,
            provider=provider,
            finished=finished,
            holds=holds,
        )
    if duplicates:
        logger.info("job %s: regenerated %s near-duplicate question(s)", job_id, len(duplicates))
    return len(duplicates)


def _reading_order(key: str) -> tuple[int, int]:
    module, _, lesson = key.partition(".")
    return int(module[1:]), int(lesson[1:] or 0)


def _course_stems(job_id: UUID, *, except_key: str) -> list[tuple[str, str]]:
    outputs = GenerationTask.objects.filter(job_id=job_id, kind=TaskKind.ASSESSMENT).exclude(
        key=except_key
    )
    return [
        (key, q["stem"])
        for key, output in outputs.values_list("key", "output")
        for q in (output or {}).get("questions", [])
    ]


def _dedupe_one(
    *,
    task: GenerationTask,
    duplicate: Duplicate,
    provider: Provider | None,
    finished: bool,
    holds: Callable[[], bool],
) -> None:
    worker = f"dedupe:{common.worker_name()}"
    task.refresh_from_db()
    data = task.output or {}
    part = f"questions.{duplicate.index}"
    others = _course_stems(task.job_id, except_key=task.key)
    topic = task.job.course_request.topic

    def elsewhere(merged: dict[str, Any]) -> list[FieldError]:
        stem = merged["questions"][duplicate.index]["stem"]
        match = next((o for o in others if is_near_duplicate(stem, o[1], topic=topic)), None)
        if match is None:
            return []
        return [Duplicate(task.key, duplicate.index, *match).error()]

    try:
        result = regenerate_part(
            runs.task_spec_build(task=task, worker=worker, heartbeat=holds),
            provider or get_provider(),
            data=data,
            part=part,
            errors=[duplicate.error()],
            extra=elsewhere,
            # The simulator reads this; a real model sees the duplicate and siblings in the prompt.
            context={"avoid": [s for _, s in others] + _siblings(data, duplicate.index)},
        )
    except Exception as exc:  # a bug must not lose the ledger of the calls made
        logger.exception("replacing question %s of task %s crashed", part, task.pk)
        result = GenerationResult(error=public_error("internal error", exc))
    lease = runs.LeaseClock(settings.COURSEGEN_TASK_LEASE_S)
    runs.while_lease_holds(
        lease,
        lambda: _dedupe_record(task=task, result=result, finished=finished, holds=holds),
    )


def _siblings(data: dict[str, Any], index: int) -> list[str]:
    return [q["stem"] for i, q in enumerate(data.get("questions", [])) if i != index]


@transaction.atomic
def _dedupe_record(
    *, task: GenerationTask, result: GenerationResult, finished: bool, holds: Callable[[], bool]
) -> None:
    """Merge the replacement question. If none passed, the task fails while its course is being
    made (the content is not valid); on a finished course the current version stays. The calls
    are accounted for whatever happens, the merge only while the caller still holds its lease."""
    locked = GenerationTask.objects.select_for_update().get(pk=task.pk)
    task.attempts = locked.attempts
    ledger.task_attempts_record(task=task, result=result)
    ledger.task_usage_add(task=task, result=result)
    if not holds():
        logger.warning("task %s: lease lost; the replacement question is not merged", task.pk)
        return
    changes: dict[str, Any] = {}
    if result.ok:  # the replacement was moderated: a flagged one holds the task (not published)
        changes |= {"output": result.data, **runs.new_version_moderation(task=task, result=result)}
    else:
        changes |= {
            "validation_errors": result.validation_errors,
            "error": f"a near-duplicate question could not be replaced: {result.error}",
        }
        if not finished:
            changes["status"] = TaskStatus.FAILED
    GenerationTask.objects.filter(pk=task.pk, status=TaskStatus.SUCCEEDED).update(**changes)
    log_event(
        "question.replaced" if result.ok else "question.not_replaced",
        f"{task.kind} {task.key}: near-duplicate question "
        + ("replaced" if result.ok else f"kept: {result.error}"),
        level="info" if result.ok else "error",
        job=task.job,
        task=task,
        data={"attempts": len(result.attempts), "validation_errors": result.validation_errors},
    )
