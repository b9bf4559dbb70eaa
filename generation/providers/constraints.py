"""Where the openai provider remembers each server's constraint step (the ladder in openai.py).

`MemoryConstraints` keeps the decisions in this process; `DatabaseConstraints` also stores each in
the `ProviderConstraint` table, so every worker (and a restarted one) skips the steps a server
refused, and the health report and the admin show what each server took. The table is only a
memory: when the database cannot be read or written, the ladder still works, one process at a
time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from generation.schemas import ConstraintStep

logger = logging.getLogger("coursegen.providers.openai")

Key = tuple[str, str]  # (base URL, model)


class ConstraintStore(Protocol):
    def get(self, base_url: str, model: str) -> ConstraintStep | None: ...

    def put(
        self, base_url: str, model: str, step: ConstraintStep, refusals: list[dict[str, Any]]
    ) -> None: ...


class MemoryConstraints:
    """Decisions of this process; shared by every provider instance that uses the same store."""

    def __init__(self) -> None:
        self._steps: dict[Key, ConstraintStep] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str, model: str) -> ConstraintStep | None:
        with self._lock:
            return self._steps.get((base_url, model))

    def put(
        self, base_url: str, model: str, step: ConstraintStep, refusals: list[dict[str, Any]]
    ) -> None:
        with self._lock:
            self._steps[(base_url, model)] = step


class DatabaseConstraints(MemoryConstraints):
    """The process's memory in front of the ProviderConstraint table."""

    def get(self, base_url: str, model: str) -> ConstraintStep | None:
        step = super().get(base_url, model)
        if step is not None:
            return step
        from generation.provider_models import ProviderConstraint

        try:
            row = ProviderConstraint.objects.filter(base_url=base_url, model=model).first()
        except Exception as exc:  # a memory, not a dependency: never fail a call over it
            logger.warning("cannot read the constraint of %s (%s): %r", model, base_url, exc)
            return None
        if row is None:
            return None
        step = ConstraintStep(row.step)
        super().put(base_url, model, step, row.refusals)
        return step

    def put(
        self, base_url: str, model: str, step: ConstraintStep, refusals: list[dict[str, Any]]
    ) -> None:
        super().put(base_url, model, step, refusals)
        from generation.provider_models import ProviderConstraint

        try:
            ProviderConstraint.objects.update_or_create(
                base_url=base_url,
                model=model,
                defaults={"step": step.value, "refusals": refusals},
            )
        except Exception as exc:  # the process still remembers it
            logger.warning("cannot store the constraint of %s (%s): %r", model, base_url, exc)


# One memory per process for providers built without a store of their own (tests, scripts).
PROCESS_CONSTRAINTS = MemoryConstraints()
