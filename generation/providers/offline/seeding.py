"""Deterministic seeding: the same request draws the same content in every process."""

from __future__ import annotations

import hashlib
import random

from generation.schemas import TaskKind


def stable_int(*parts: object) -> int:
    """A process-independent 64-bit seed (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def content_rng(
    seed: int, topic: str, kind: TaskKind, module: int, lesson: int, variant: int = 0
) -> random.Random:
    # A variant (a regenerated version, a replacement part) draws again, like sampling anew.
    extra = (variant,) if variant else ()
    return random.Random(
        stable_int("content", seed, topic.strip().lower(), kind.value, module, lesson, *extra)
    )
