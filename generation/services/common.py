"""What every service shares: the error a caller may show, this worker's name, a tier's model."""

from __future__ import annotations

import functools
import os
import socket
import threading

from django.conf import settings

from generation.schemas import Tier


class GenerationError(Exception):
    """A request that cannot be carried out; the message is safe to show to the caller."""


class UrgencyNotAllowedError(GenerationError):
    """The caller's role may not submit with this urgency (COURSEGEN_BATCH_ROLES): a 403."""


def worker_name() -> str:
    return f"{_host()}:{os.getpid()}:{threading.get_ident()}"


@functools.cache
def _host() -> str:
    return socket.gethostname()


def model_for(tier: Tier) -> str:
    return (
        settings.COURSEGEN_MODEL_COMPLEX
        if tier is Tier.COMPLEX
        else settings.COURSEGEN_MODEL_SIMPLE
    )
