"""Process start-up tuning: the GIL switch interval, the frozen start-up heap and the workers'
scheduling policy."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coursegen.celery import freeze_heap
from coursegen.runtime import web_process_ready


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    interval = sys.getswitchinterval()
    gc.unfreeze()
    yield
    gc.unfreeze()
    sys.setswitchinterval(interval)


def test_a_web_process_freezes_its_start_up_heap_and_shortens_the_switch_interval(
    settings: Any,
) -> None:
    settings.WEB_GIL_SWITCH_INTERVAL_S = 0.0005

    web_process_ready()

    assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert gc.get_freeze_count() > 10_000  # Django, DRF and the project's modules
    # A full collection walks the collector's generations only: the start-up heap is not in them.
    assert len(gc.get_objects()) < gc.get_freeze_count() / 10


def test_a_worker_freezes_its_heap_once_started() -> None:
    freeze_heap(sender=None)

    assert gc.get_freeze_count() > 10_000


def test_freezing_can_be_turned_off(settings: Any) -> None:
    settings.GC_FREEZE_AFTER_STARTUP = False

    web_process_ready()
    freeze_heap(sender=None)

    assert gc.get_freeze_count() == 0


_WSGI_PROBE = """
import json
import coursegen.wsgi  # noqa: F401  (what gunicorn loads in each web process)
from generation.providers import get_provider
print(json.dumps({"providers_built": get_provider.cache_info().currsize}))
"""


def test_a_web_process_builds_the_provider_before_its_first_request() -> None:
    """The first submit moderates its request; building the provider then (importing the openai
    SDK, seconds of CPU) inside the request held every greenlet of a gevent web process."""
    run = subprocess.run(
        [sys.executable, "-c", _WSGI_PROBE],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "coursegen.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["providers_built"] > 0


_SCHED_PROBE = """
import json, os, threading, time
import django
django.setup()
from coursegen.runtime import worker_threads_batch

def policies():
    return sorted(os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task"))

before_start = threading.Thread(target=time.sleep, args=(5,), daemon=True)
before_start.start()
moved = worker_threads_batch()
started_after = []
threading.Thread(target=lambda: started_after.append(os.sched_getscheduler(0))).start()
time.sleep(0.5)
print(json.dumps({"moved": moved, "policies": policies(), "after": started_after}))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize("enabled", [True, False])
def test_a_worker_puts_every_thread_under_sched_batch(enabled: bool) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _SCHED_PROBE],
        cwd=Path(__file__).resolve().parent.parent,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "coursegen.settings",
            "WORKER_SCHED_BATCH": str(enabled).lower(),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    policy = os.SCHED_BATCH if enabled else os.SCHED_OTHER
    # The main thread and the one already running, then a thread started afterwards inherits.
    assert found["moved"] == (len(found["policies"]) if enabled else 0)
    assert set(found["policies"]) == {policy} and len(found["policies"]) >= 2
    assert found["after"] == [policy]


def test_a_worker_with_more_slots_than_the_concurrency_cap_says_so(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from coursegen.celery import concurrency_cap

    settings.COURSEGEN_CONCURRENCY_ENABLED = True
    settings.COURSEGEN_CONCURRENCY_MAX = 1024.0

    class Worker:
        concurrency = 300

    with caplog.at_level("WARNING", logger="coursegen"):
        concurrency_cap(sender=Worker())
        assert not caplog.records
        Worker.concurrency = 1600
        concurrency_cap(sender=Worker())
    [record] = caplog.records
    assert "1600 is above COURSEGEN_CONCURRENCY_MAX=1024" in record.getMessage()
    caplog.clear()
    settings.COURSEGEN_CONCURRENCY_ENABLED = False  # no limiter, nothing to wait for
    concurrency_cap(sender=Worker())
    assert not caplog.records
