"""Process-level tuning applied when a web or worker process has finished starting."""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

from django.conf import settings

logger = logging.getLogger("coursegen")


def freeze_startup_heap() -> None:
    """Take what start-up allocated (modules, settings, URL patterns, serializers) out of the
    cyclic collector's reach. It never becomes garbage, yet every full collection walked it:
    ~40 ms holding the GIL in a web process, every request thread stalled (the submit p99 of
    `make bench`). Idempotent; later allocations are collected as usual."""
    if settings.GC_FREEZE_AFTER_STARTUP:
        gc.collect()  # what start-up already dropped should not be kept for ever
        gc.freeze()


def web_process_ready() -> None:
    # A web thread back from a PostgreSQL round trip waits for the GIL behind CPU-bound threads
    # (status polls) up to the switch interval, once per statement; a shorter interval shortens
    # that wait.
    sys.setswitchinterval(settings.WEB_GIL_SWITCH_INTERVAL_S)
    _load_the_views()
    freeze_startup_heap()


def _load_the_views() -> None:
    """Import every view (and with them serializers, renderers, the schema) now rather than on
    the first requests, so the heap frozen after start-up holds them."""
    from django.urls import get_resolver

    resolver = get_resolver()
    resolver.url_patterns  # noqa: B018  (imports the URLconf and every view it names)
    resolver.reverse_dict  # noqa: B018  (builds reverse()'s lookup tables)


def worker_threads_batch() -> int:
    """Put this worker's threads under SCHED_BATCH (those on the default policy); returns how many
    were moved.

    Linux's fair scheduler keeps a batch thread's CPU share (same weight), but a batch thread
    that wakes up does not preempt the thread running on its CPU: hundreds of worker threads
    waking from provider and database round trips no longer cut into a web process's request
    on the same host, while a web process that wakes still preempts them. Threads started later
    inherit the policy from the thread that starts them (the pool's, the consumer's). Unprivileged
    processes may choose it; where the platform has no such policy or a sandbox refuses it, the
    worker runs as before."""
    if not settings.WORKER_SCHED_BATCH or not hasattr(os, "SCHED_BATCH"):
        return 0
    try:
        tids = [int(entry.name) for entry in Path("/proc/self/task").iterdir()]
    except OSError:
        tids = [0]  # no /proc: this thread, which starts the pool
    moved = 0
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:  # not one an operator chose
                os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
                moved += 1
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except OSError as exc:
            logger.warning("worker threads stay SCHED_OTHER: %s", exc)
            return moved
    return moved


def concurrency_cap_check(concurrency: int) -> None:
    """Warn when one worker's slots exceed the provider concurrency limiter's cap.

    The cap (`COURSEGEN_CONCURRENCY_MAX`, per model, shared by the whole fleet) should be at
    least the slots that can call a model: below them, threads hold tasks that wait for permits
    while the provider could take the calls (in `make bench`, 4 workers x 400 threads under a
    cap of 1,024 made a course under load take 1.67 times its critical path against 1.24)."""
    if (
        not settings.COURSEGEN_CONCURRENCY_ENABLED
        or concurrency <= settings.COURSEGEN_CONCURRENCY_MAX
    ):
        return
    logger.warning(
        "worker concurrency %d is above COURSEGEN_CONCURRENCY_MAX=%g: provider calls will wait "
        "for permits while threads are free; set the cap to at least the fleet's worker slots "
        "(processes x concurrency) unless the provider needs it lower",
        concurrency,
        settings.COURSEGEN_CONCURRENCY_MAX,
    )
