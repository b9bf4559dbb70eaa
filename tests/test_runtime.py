"""Process start-up tuning: the GIL switch interval and the frozen start-up heap."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
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
