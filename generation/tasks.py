"""Celery tasks: thin deliveries that take ids, re-read rows and call a service.

A message may be lost or delivered twice; the services make a repeat harmless and the rows in
PostgreSQL stay the record (the reconciler re-sends what a lost message left behind). Header tasks
of the chord never raise for a failed generation (the row says it failed), so the chord body always
runs. A task whose provider is unavailable is deferred: Celery retries it after a countdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from celery import Task, shared_task

from generation import cache, recovery, regeneration, services
from generation.models import RegenerationSource
from generation.quality import judging
from ratelimits.services import RateLimitExceeded, RequestTooLarge


def _run_deferrable(task: Task, call: Callable[[], float | None]) -> None:
    """Run `call`; when it asks for a delay, retry the Celery task after it (sleep when eager)."""
    delay = call()
    while delay is not None:
        if not task.request.is_eager:
            raise task.retry(countdown=delay, max_retries=None)
        time.sleep(delay)  # eager (the embedded demo): no broker to hold the retry
        delay = call()


logger = logging.getLogger("coursegen.generation")


# dispatch_queue, reconcile and finalize_job are sent at HOUSEKEEPING_PRIORITY (0): short work that
# starts waiting jobs and frees running slots goes before queued generation messages.
@shared_task(name="generation.tasks.dispatch_queue", ignore_result=True)
def dispatch_queue() -> int:
    services.dispatch_asked_clear()  # before reading the queue: asks from now on send a new run
    started = services.queue_dispatch()
    services.capacity_check()  # beat runs this every few seconds: the capacity alert's heartbeat
    return len(started)


@shared_task(name="generation.tasks.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    return recovery.reconcile().as_dict()


@shared_task(bind=True, name="generation.tasks.run_outline", ignore_result=True)
def run_outline(self: Task, job_id: str) -> None:
    _run_deferrable(self, lambda: services.job_run_outline(job_id=UUID(job_id)))


# Chord header. Its result is not stored: the result backend counts the chord down in the chord's
# own keys either way (planning._send_chord).
@shared_task(bind=True, name="generation.tasks.run_task", ignore_result=True)
def run_task(self: Task, task_id: int) -> str:
    outcome: dict[str, Any] = {}

    def run() -> float | None:
        result = services.task_run(task_id=task_id)
        outcome["status"] = result.status
        return result.retry_in

    _run_deferrable(self, run)
    return str(outcome["status"])


@shared_task(name="generation.tasks.finalize_job", ignore_result=True)
def finalize_job(job_id: str) -> str:
    return str(services.job_finalize(job_id=UUID(job_id)).status)


@shared_task(bind=True, name="generation.tasks.regenerate_task", ignore_result=True)
def regenerate_task(self: Task, request_id: int, *legacy: Any) -> None:
    if legacy:  # a message from before requests had ids: (task_id, instruction, user_id)
        _regenerate_legacy(task_id=request_id, instruction=str(legacy[0]), user_id=legacy[1])
        return
    _run_deferrable(self, lambda: regeneration.regeneration_run(request_id=request_id).retry_in)


def _regenerate_legacy(*, task_id: int, instruction: str, user_id: int) -> None:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(pk=user_id).first()
    try:
        regeneration.regeneration_request_create(
            task_id=task_id, by=user, source=RegenerationSource.API, instruction=instruction
        )
    except (services.GenerationError, RateLimitExceeded, RequestTooLarge) as exc:
        # e.g. a second request for the same task, or over the user's regeneration limit
        logger.warning("task %s not regenerated: %s", task_id, exc)


# The quality judge, after finalize: its own messages at COURSEGEN_JUDGE_PRIORITY, so a slow judge
# never holds up generation.
@shared_task(name="generation.tasks.judge_job", ignore_result=True)
def judge_job(job_id: str) -> int:
    return len(judging.job_judge_start(job_id=UUID(job_id)))


@shared_task(bind=True, name="generation.tasks.judge_lesson", ignore_result=True)
def judge_lesson(self: Task, run_id: int) -> None:
    _run_deferrable(self, lambda: judging.judge_run_execute(run_id=run_id))


# The Batch API poller (docs/batch.md): beat every COURSEGEN_BATCH_POLL_INTERVAL_S; one run at a
# time per batch (the batch row's lease), so overlapping runs are harmless.
@shared_task(name="generation.tasks.batch_poll", ignore_result=True)
def batch_poll() -> dict[str, int]:
    return services.batch_poll().as_dict()


@shared_task(name="generation.tasks.cache_purge_expired", ignore_result=True)
def cache_purge_expired() -> int:
    return cache.cache_purge_expired()
