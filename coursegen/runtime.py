"""Process-level tuning applied when a web or worker process has finished starting."""

from __future__ import annotations

import gc
import sys

from django.conf import settings


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
