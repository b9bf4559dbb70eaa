"""Load what the first task would otherwise load, before a worker takes any task.

textstat's first reading-level check builds its dictionaries (about a second of CPU) and
tiktoken's encoding loads on first use, and so does the provider (the offline simulator imports
the openai SDK for its Batch emulation: about 2.5 CPU-s in the bench's profile, issue 22).
Loaded lazily, every thread of a fresh worker that got a task at the same moment built them at
once under the GIL: the first course after a worker start took ten seconds longer than its
slowest chain of provider calls. `worker_init` runs before the
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
    providers_build()
    return time.monotonic() - started


def providers_build() -> None:
    """Build the generation and moderation providers (cached per process; no network until the
    first call). A web process needs this too: a submit moderates its request, and the first
    one built the provider inside the request (about 2.5 CPU-s importing the openai SDK), which
    under gevent held every greenlet of the process for seconds (issue 22's users1000 phase)."""
    from generation.providers import get_moderation_provider, get_provider

    try:
        get_provider()
        get_moderation_provider()
    except Exception:  # e.g. a setting the first call will report; the process still starts
        logger.exception("warm-up could not build the provider")


@worker_init.connect
def warm_up_worker(**kwargs: Any) -> None:
    logger.info("worker warm-up took %.2fs", warm_up())
