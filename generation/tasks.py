"""Celery tasks: thin deliveries that take ids, re-read rows and call a service.

A message may be lost or delivered twice; the services make a repeat harmless and the rows in
PostgreSQL stay the record. Header tasks of the chord never raise for a failed generation (the row
says it failed), so the chord body always runs and finalizes the job.
"""

from __future__ import annotations

import logging
from uuid import UUID

from celery import shared_task

from generation import services

logger = logging.getLogger("coursegen.generation")


@shared_task(name="generation.tasks.dispatch_queue", ignore_result=True)
def dispatch_queue() -> int:
    return len(services.queue_dispatch())


@shared_task(name="generation.tasks.run_outline", ignore_result=True)
def run_outline(job_id: str) -> None:
    services.job_run_outline(job_id=UUID(job_id))


# Chord header: keeps a small result so the chord counts it (the result backend holds the count).
@shared_task(name="generation.tasks.run_task", ignore_result=False)
def run_task(task_id: int) -> str:
    return services.task_run(task_id=task_id).status


@shared_task(name="generation.tasks.finalize_job", ignore_result=True)
def finalize_job(job_id: str) -> str:
    return str(services.job_finalize(job_id=UUID(job_id)).status)


@shared_task(name="generation.tasks.regenerate_task", ignore_result=True)
def regenerate_task(task_id: int, instruction: str, user_id: int) -> None:
    from django.contrib.auth import get_user_model

    from generation.regeneration import task_regenerate

    user = get_user_model().objects.get(pk=user_id)
    try:
        task_regenerate(task_id=task_id, instruction=instruction, by=user)
    except services.GenerationError as exc:  # e.g. a second request for the same task
        logger.warning("task %s not regenerated: %s", task_id, exc)
