"""A probe task for the queue-ordering measurement (`make bench BENCH_ARGS="--phases priority"`)."""

from __future__ import annotations

import json
import time

import redis
from celery import shared_task
from django.conf import settings


@shared_task(name="perf.tasks.probe", ignore_result=True)
def probe(label: str, sent_at: float, sleep_s: float) -> None:
    """Record when the probe started (against when it was sent), then hold the slot a while."""
    started = time.time()
    client = redis.Redis.from_url(str(settings.REDIS_URL))
    client.rpush("perf:probes", json.dumps({"label": label, "wait_s": started - sent_at}))
    time.sleep(sleep_s)
