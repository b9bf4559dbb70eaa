"""Time for leases comes from the database, not from each host.

A lease written by one machine and compared by another is only as good as the two clocks agree;
every worker, beat and web process reads PostgreSQL's clock instead (`STATEMENT_TIMESTAMP()`,
what Django's `Now()` compiles to there). The fencing token of a claim is the worker's name and
the run number the claim gave the row (`runs`): a run whose lease was taken over, even by a
worker of the same name, can no longer write.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, Value
from django.db.models.functions import Now
from django.utils import timezone


def db_now() -> datetime:
    """The database's clock (SQLite, the single-process demo, has only this host's)."""
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT STATEMENT_TIMESTAMP()")
        now: datetime = cursor.fetchone()[0]
    return now


def db_now_plus(seconds: float) -> ExpressionWrapper:
    """`now + seconds` on the database's clock, for an update() or a filter()."""
    return ExpressionWrapper(
        Now() + Value(timedelta(seconds=seconds), output_field=DurationField()),
        output_field=DateTimeField(),
    )
