"""Which path a hot write takes: hand-written statements or the ORM."""

from __future__ import annotations

from django.db import connection


def hand_written_sql() -> bool:
    """The hottest writes (generation/hotpath.py, rate-limit admission) have hand-written
    PostgreSQL statements; other databases (SQLite, for the embedded demo) take their ORM
    versions, which do the same."""
    return connection.vendor == "postgresql"
