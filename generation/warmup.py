"""Load what the first task would otherwise load, before a worker takes any task.

textstat's first reading-level check builds its dictionaries (about a second of CPU) and
tiktoken's encoding loads on first use. Loaded lazily, every thread of a fresh worker that got a
task at the same moment built them at once under the GIL: the first course after a worker start
took ten seconds longer than its slowest chain of provider calls. `worker_init` runs before the
worker consumes; prefork children inherit the loaded state.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import worker_init

logger = logging.getLogger("coursegen.generation")


def warm_up() -> float:
    from generation.checks import prose_grade
    from generation.pricing import warn_unpriced_models
    from generation.tokens import count_tokens

    started = time.monotonic()
    warn_unpriced_models()  # a worker runs no system checks: the same warning, once, at start
    count_tokens("Warm the tokenizer up.")
    prose_grade("Plants turn light into sugar. The leaf holds the green pigment that does it.")
    return time.monotonic() - started


@worker_init.connect
def warm_up_worker(**kwargs: Any) -> None:
    logger.info("worker warm-up took %.2fs", warm_up())
