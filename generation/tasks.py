"""Celery tasks: thin deliveries that take ids, re-read rows and call a service.

A message may be lost or delivered twice; the services make a repeat harmless and the rows in
PostgreSQL stay the record. Header tasks of the chord never raise for a failed generation (the row
says it failed), so the chord body always runs and finalizes the job.
"""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from generation import services
from monitoring.services import capacity_check


@shared_task(name="generation.tasks.dispatch_queue", ignore_result=True)
def dispatch_queue() -> int:
    started = services.queue_dispatch()
    capacity_check()  # beat runs this every few seconds: the capacity alert's heartbeat
    return len(started)


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
