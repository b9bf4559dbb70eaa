"""The three queries of the specification's "Logs" section run as written against PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from generation import services
from generation.providers import get_provider
from generation.schemas import CourseRequest
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog

pytestmark = pytest.mark.django_db(transaction=True)

# Verbatim from the specification, trailing spaces included.
RECENT_ERRORS = (
    "SELECT * FROM course_generation_logs \n"
    "WHERE level IN ('error', 'critical')\n"
    "AND created_at > NOW() - INTERVAL '1 hour'\n"
    "ORDER BY created_at DESC;"
)
USER_RATE_LIMITS = "SELECT * FROM course_generation_rate_limits\nWHERE user_id = 'user-id-here';"
ACTIVE_JOBS = (
    "SELECT status, COUNT(*) \n"
    "FROM course_generation_jobs\n"
    "WHERE created_at > NOW() - INTERVAL '1 day'\n"
    "GROUP BY status;"
)


def _rows(sql: str) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def _columns(table: str) -> list[str]:
    with connection.cursor() as cursor:
        return [c.name for c in connection.introspection.get_table_description(cursor, table)]


def test_the_recent_errors_query_finds_new_error_and_critical_rows_newest_first(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # invalid replies can be combined
    services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Comets", num_modules=1)
    )
    flush_all()
    CourseGenerationLog.objects.create(
        level="critical", event="old", created_at=timezone.now() - timedelta(hours=2)
    )

    rows = _rows(RECENT_ERRORS)

    columns = _columns("course_generation_logs")
    found = [dict(zip(columns, row, strict=True)) for row in rows]
    events = [r["event"] for r in found]
    assert "task.failed" in events and "job.failed" in events and "old" not in events
    assert {r["level"] for r in found} <= {"error", "critical"}
    times = [r["created_at"] for r in found]
    assert times == sorted(times, reverse=True)


def test_the_active_jobs_query_counts_todays_jobs_by_status(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    request = CourseRequest(topic="Nebulae", num_modules=1, lessons_per_module=1)
    services.job_submit(user=teacher, base_class=base_class, request=request)
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # invalid replies can be combined
    get_provider.cache_clear()  # the provider is built once per process
    services.job_submit(user=teacher, base_class=base_class, request=request)

    assert dict(_rows(ACTIVE_JOBS)) == {"succeeded": 1, "failed": 1}


def test_the_user_rate_limits_query_runs_when_its_table_exists(teacher: Any) -> None:
    if "course_generation_rate_limits" not in connection.introspection.table_names():
        pytest.skip("course_generation_rate_limits is created by the rate-limits branch")
    sql = USER_RATE_LIMITS
    user_column = next(
        c
        for c in connection.introspection.get_table_description(
            connection.cursor(), "course_generation_rate_limits"
        )
        if c.name == "user_id"
    )
    if user_column.type_code not in (25, 1043):  # not text/varchar: 'user-id-here' is no id
        sql = sql.replace("user-id-here", str(teacher.pk))

    assert _rows(sql) == []  # runs as written; nobody has used anything yet
