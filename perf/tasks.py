"""Tasks the benchmark sends to real workers: a probe for the queue-ordering measurement
(`--phases priority`) and no-op courses for the Celery floor (`--phases floor`)."""

from __future__ import annotations

import json
import time

import redis
from celery import chord, shared_task
from django.conf import settings

from coursegen.cache import redis_client

FLOOR_DONE = "perf:floor-done"  # a floor course's body pushes its number here


@shared_task(name="perf.tasks.probe", ignore_result=True)
def probe(label: str, sent_at: float, sleep_s: float) -> None:
    """Record when the probe started (against when it was sent), then hold the slot a while."""
    started = time.time()
    client = redis.Redis.from_url(str(settings.REDIS_URL))
    client.rpush("perf:probes", json.dumps({"label": label, "wait_s": started - sent_at}))
    time.sleep(sleep_s)


# A course with Celery's work and nothing else: the outline task sends a chord of `width` tasks
# whose body finalizes, with the pipeline's options (header results not stored, body at priority 0).
@shared_task(name="perf.tasks.floor_outline", ignore_result=True)
def floor_outline(course: int, width: int, priority: int) -> None:
    header = [floor_task.si(course, i).set(priority=priority) for i in range(width)]
    chord(header, floor_finalize.si(course).set(priority=0)).apply_async()


@shared_task(name="perf.tasks.floor_task", ignore_result=True)
def floor_task(course: int, index: int) -> str:
    return "succeeded"


@shared_task(name="perf.tasks.floor_finalize", ignore_result=True)
def floor_finalize(course: int) -> None:
    redis_client(str(settings.REDIS_URL)).rpush(FLOOR_DONE, course)
