"""Queue order: priority with aging, computed by the database so every dispatcher agrees.

A queued job's effective priority is `priority - floor(seconds waited / COURSEGEN_QUEUE_AGING_S)`
(lower runs sooner), so a low-priority job gains one step per aging interval and never starves:
a LOW (8) job waiting eight intervals ranks with a fresh URGENT (0) one, and older jobs win ties.

The aging goes on after admission (`aged_broker_priority`): every message a job sends (its
outline, its chord, the reconciler's re-sends) carries its priority aged from its submission, so a
student's job does not sit at 8 behind all other traffic while it holds a running slot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, F, Func, IntegerField, QuerySet, Value
from django.db.models.sql.compiler import SQLCompiler

from generation.models import Priority, QueueEntry

# PostgreSQL's effective priority of a row; AgedPriority and the hand-written queue position
# (selectors.queue_position) both use it, so the two cannot drift apart.
PG_AGED_PRIORITY = (
    "({priority} - FLOOR(EXTRACT(EPOCH FROM (STATEMENT_TIMESTAMP() - {enqueued_at})) / {aging_s}))"
    "::integer"
)


class AgedPriority(Func):
    output_field = IntegerField()

    def __init__(self, aging_s: float, priority: Any = None, enqueued_at: Any = None) -> None:
        """Of the row's own columns, or of given values (one entry's, to compare rows to it)."""
        super().__init__(priority or F("priority"), enqueued_at or F("enqueued_at"))
        self.aging_s = float(aging_s)

    def _parts(self, compiler: SQLCompiler) -> tuple[str, str, list[Any]]:
        priority, p_params = compiler.compile(self.source_expressions[0])
        enqueued, e_params = compiler.compile(self.source_expressions[1])
        return priority, enqueued, [*p_params, *e_params, self.aging_s]

    def as_sql(  # type: ignore[override]  # PostgreSQL
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, list[Any]]:
        priority, enqueued, params = self._parts(compiler)
        return PG_AGED_PRIORITY.format(
            priority=priority, enqueued_at=enqueued, aging_s="%s"
        ), params

    def as_sqlite(  # type: ignore[override]  # the embedded demo
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, list[Any]]:
        priority, enqueued, params = self._parts(compiler)
        waited = f"((julianday('now') - julianday({enqueued})) * 86400.0)"
        return f"({priority} - CAST({waited} / %s AS INTEGER))", params


def aged_priority(entry: QueueEntry | None = None) -> AgedPriority:
    """Every row's effective priority, or `entry`'s (as SQL, so it ages on the same clock)."""
    if entry is None:
        return AgedPriority(settings.COURSEGEN_QUEUE_AGING_S)
    return AgedPriority(
        settings.COURSEGEN_QUEUE_AGING_S,
        Value(entry.priority, IntegerField()),
        Value(entry.enqueued_at, DateTimeField()),
    )


def queued_in_order(entries: QuerySet[QueueEntry]) -> QuerySet[QueueEntry]:
    """Queued entries in starting order: effective (aged) priority, then the longest waiting."""
    return entries.annotate(effective_priority=aged_priority()).order_by(
        "effective_priority", "enqueued_at", "pk"
    )


def aged_broker_priority(*, priority: int, since: datetime, now: datetime) -> int:
    """The priority a job's message goes at: the job's own, one step better per aging interval
    since `since` (its submission, when its queue entry was made), as the queue ages it."""
    steps = int(max((now - since).total_seconds(), 0.0) // settings.COURSEGEN_QUEUE_AGING_S)
    return max(int(Priority.URGENT), priority - steps)
