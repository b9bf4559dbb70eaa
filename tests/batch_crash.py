"""Imported by a worker a test is about to kill (tests/test_batch_processes.py): the emulated
Batches endpoint creates the batch, then the process stops in the worst place, before the batch's
id reaches the database. BATCH_CRASH_AT says which creation (counted across processes by the
emulator's batches), BATCH_CRASH_MARK the file it touches when it got there."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from generation.providers.offline.batches import BatchEmulator

_real_create = BatchEmulator.create


def _create_then_hang(self: BatchEmulator, **kwargs: Any) -> Any:
    state = _real_create(self, **kwargs)
    if self.count() >= int(os.environ["BATCH_CRASH_AT"]):
        Path(os.environ["BATCH_CRASH_MARK"]).write_text(state.id)
        threading.Event().wait()  # mid-poll until kill -9
    return state


BatchEmulator.create = _create_then_hang  # type: ignore[method-assign]
