"""From the outline to the chord: run the outline task, plan one task row per unit of the
course, and send every row as a chord whose body finalizes the job (once per job)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from coursegen import db
from generation import hotpath, messages, variants
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus, Urgency
from generation.prompts import PROMPT_VERSIONS
from generation.providers import Provider
from generation.queueing import aged_broker_priority
from generation.schemas import TASK_TIERS, CourseOutline, TaskKind
from generation.services import batchqueue, common, finalize, runs
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


def job_run_outline(
    *, job_id: UUID, worker: str | None = None, provider: Provider | None = None
) -> float | None:
    """Write the outline, plan the tasks and send the chord. Returns a delay when deferred."""
    job = CourseGenerationJob.objects.get(pk=job_id)
    if job.status != JobStatus.RUNNING:
        return None
    outline_task = job.tasks.get(kind=TaskKind.OUTLINE)
    _outline_choice_apply(task=outline_task)
    if job.urgency == Urgency.BATCH and batchqueue.outline_to_batch(task=outline_task):
        return None  # the batch poller applies its answer and calls job_after_outline
    result = runs.task_run(task_id=outline_task.pk, worker=worker, provider=provider)
    if result.retry_in is not None:
        return result.retry_in
    job_after_outline(job_id=job_id, detail=str(result), job=job)
    return None


def job_after_outline(
    *, job_id: UUID, detail: str = "", job: CourseGenerationJob | None = None
) -> None:
    """Once the outline task ended: plan the tasks and send them (a chord, or the next batch),
    or close the job when the outline failed. `job`, when the caller has read it, is only
    logged: planning re-reads it under its lock."""
    job = job or CourseGenerationJob.objects.get(pk=job_id)
    outline_task = job.tasks.get(kind=TaskKind.OUTLINE)
    if outline_task.status == TaskStatus.FAILED:
        finalize.job_finalize(job_id=job_id)
        return
    if outline_task.status != TaskStatus.SUCCEEDED:
        logger.info("job %s: outline %s elsewhere (%s)", job_id, outline_task.status, detail)
        return
    job_plan_tasks(job_id=job_id, outline=outline_task.output or {})
    log_event("job.outline_done", f"job {job_id}: outline done", job=job, task=outline_task)
    job_dispatch_chord(job_id=job_id)


@transaction.atomic
def job_plan_tasks(*, job_id: UUID, outline: dict[str, Any]) -> None:
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    if job.outline is not None or job.status != JobStatus.RUNNING:
        return  # planned already (a repeated message), or cancelled while the outline ran
    parsed = CourseOutline.model_validate(outline)
    job.outline = outline
    job.save(update_fields=["outline", "updated_at"])
    choices = variants.choices_for_job(job_id=job.pk, defaults=default_choices())
    rows = [
        {
            "kind": kind.value,
            "key": key,
            "position": position,
            "tier": TASK_TIERS[kind].value,
            "model": choices[kind].model,
            "prompt_version": choices[kind].prompt_version,
            "variant_id": choices[kind].variant_id,
        }
        for position, (kind, key) in enumerate(plan_units(parsed), start=1)
    ]
    if db.hand_written_sql():
        hotpath.insert_planned(job_id=job.pk, tasks=rows)
    else:
        tasks = [GenerationTask(job=job, **row) for row in rows]
        GenerationTask.objects.bulk_create(tasks, ignore_conflicts=True)
    runs.job_refresh_progress(job_id=job_id)


def default_choices() -> dict[TaskKind, variants.Choice]:
    """Each kind's built-in model (its tier's) and prompt version, before promotions."""
    return {
        kind: variants.Choice(common.model_for(TASK_TIERS[kind]), PROMPT_VERSIONS[kind])
        for kind in TaskKind
    }


def _outline_choice_apply(*, task: GenerationTask) -> None:
    """The outline task was created at submit with the built-in defaults (the submit path stays
    lean); before its first run it takes the promoted defaults and its experiment variant."""
    if task.runs:
        return
    choice = variants.choices_for_job(job_id=task.job_id, defaults=default_choices())[
        TaskKind.OUTLINE
    ]
    changes = {
        "model": choice.model,
        "prompt_version": choice.prompt_version,
        "variant_id": choice.variant_id,
    }
    if any(getattr(task, name) != value for name, value in changes.items()):
        GenerationTask.objects.filter(pk=task.pk, runs=0).update(**changes)


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


@transaction.atomic  # a batch job's tasks are queued with the claim, or not at all
def job_dispatch_chord(*, job_id: UUID) -> bool:
    """Send the chord once per job: only the caller that sets chord_dispatched_at sends it."""
    now = timezone.now()
    if connection.vendor == "postgresql":
        return _dispatch_chord_postgresql(job_id=job_id, now=now)
    won = CourseGenerationJob.objects.filter(
        pk=job_id, status=JobStatus.RUNNING, chord_dispatched_at__isnull=True
    ).update(chord_dispatched_at=now)
    if not won:
        return False
    job = CourseGenerationJob.objects.only("priority", "created_at", "urgency").get(pk=job_id)
    if job.urgency == Urgency.BATCH:  # the poller finalizes when the last task ended
        batchqueue.job_pending_to_batch(job_id=job_id)
        return True
    # The job's priority aged since its submission, as the queue ages it (generation/queueing.py).
    priority = aged_broker_priority(priority=job.priority, since=job.created_at, now=now)
    pending_tasks = GenerationTask.objects.filter(job_id=job_id, status=TaskStatus.PENDING).exclude(
        kind=TaskKind.OUTLINE
    )
    pending = list(pending_tasks.values_list("pk", flat=True))
    pending_tasks.update(dispatched_at=now, priority_sent=priority)
    transaction.on_commit(lambda: _send_chord(job_id, pending, priority))
    return True


# The same claim and marking as the ORM path, each one statement with RETURNING.
_CHORD_CLAIM = """
UPDATE course_generation_jobs SET chord_dispatched_at = %(now)s
WHERE id = %(id)s AND status = %(running)s AND chord_dispatched_at IS NULL
RETURNING priority, created_at, urgency
"""
_CHORD_MARK = """
UPDATE course_generation_tasks SET dispatched_at = %(now)s, priority_sent = %(priority)s
WHERE job_id = %(id)s AND status = %(pending)s AND kind <> %(outline)s
RETURNING id, position
"""


def _dispatch_chord_postgresql(*, job_id: UUID, now: datetime) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_CHORD_CLAIM, {"id": job_id, "now": now, "running": JobStatus.RUNNING})
        row = cursor.fetchone()
        if row is None:
            return False
        job_priority, created_at, urgency = row
        if urgency == Urgency.BATCH:  # the poller finalizes when the last task ended
            batchqueue.job_pending_to_batch(job_id=job_id)
            return True
        priority = aged_broker_priority(priority=job_priority, since=created_at, now=now)
        cursor.execute(
            _CHORD_MARK,
            {
                "id": job_id,
                "now": now,
                "priority": priority,
                "pending": TaskStatus.PENDING,
                "outline": TaskKind.OUTLINE,
            },
        )
        pending = [task_id for task_id, _ in sorted(cursor.fetchall(), key=lambda r: r[1])]
    transaction.on_commit(lambda: _send_chord(job_id, pending, priority))
    return True


def _send_chord(job_id: UUID, task_ids: list[int], priority: int) -> None:
    """The job's tasks as a chord header at the job's priority; its body finalizes the job.

    Header tasks ignore their result like every other task: the Redis result backend counts the
    chord down in its own keys (Celery calls on_chord_part_return whether or not a result is
    stored), so the per-task result key and its PUBLISH were only written and never read. A lost
    chord (Redis restarted)
    is the reconciler's to find: it re-sends open tasks and finalizes jobs with none left.
    """
    from celery import chord

    run_task = messages.task(messages.RUN_TASK)
    finalize_job = messages.task(messages.FINALIZE_JOB)
    at = messages.broker_priority(priority)
    header = [run_task.si(task_id).set(priority=at) for task_id in task_ids]
    # The body goes before queued generation messages: it frees a running slot.
    body = finalize_job.si(str(job_id)).set(priority=messages.housekeeping_priority())
    if messages.always_eager():
        # In-process, a chord is its header then its body. Celery's eager chord joins results
        # under a process-wide "may block" flag that races when several threads run jobs at once.
        for signature in header:
            signature.apply()
        body.apply()
    elif not header:  # a resumed job with nothing left to run: the body alone
        body.apply_async()
    else:
        chord(header, body).apply_async()
