"""No statement of a course's run reads a whole table that grows with every course.

The tasks and the attempts ledger gain ~43 and ~90 rows per course for ever; a statement that
scans either costs more with each course that ever ran. These tests fill both with another
job's history, let PostgreSQL's statistics see it, and ask the planner for the plan of every
statement one course runs (and of the job's ledger reads)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.models import Q

from generation import recovery
from generation.batch_selectors import job_batch_saving
from generation.models import (
    MODERATION_REVIEWED,
    AttemptOutcome,
    CourseGenerationJob,
    GenerationAttempt,
)
from generation.moderation_models import HeldContent
from generation.selectors import job_attempts, job_run_summary
from tests.courses import finished_job

pytestmark = [
    pytest.mark.django_db(transaction=True),  # on_commit runs: the course runs through
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner"),
]

GROWING = ("course_generation_tasks", "course_generation_attempts")
HISTORY_JOBS = 200  # with this course's shape: 43 tasks, two attempts each
TASKS_PER_JOB = 43
ATTEMPTS_PER_TASK = 2


@pytest.fixture
def history(teacher: Any, base_class: Any) -> CourseGenerationJob:
    """A long past: hundreds of finished jobs like this one, with their tasks and attempts,
    analysed (copies of one finished job's row)."""
    job = finished_job(teacher, base_class)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'course_generation_jobs' AND column_name <> 'id'"
        )
        columns = ", ".join(f'"{name}"' for (name,) in cursor.fetchall())
        cursor.execute(
            f"""
            INSERT INTO course_generation_jobs (id, {columns})
            SELECT gen_random_uuid(), {columns}
            FROM course_generation_jobs, generate_series(1, %(n)s)
            WHERE id = %(job)s
            """,
            {"job": job.pk, "n": HISTORY_JOBS},
        )
        cursor.execute(
            """
            INSERT INTO course_generation_tasks (job_id, kind, key, position, status, tier,
                model, prompt_version, runs, attempts, validation_errors, error, input_tokens,
                cached_tokens, output_tokens, cost_usd, reask_cost_usd, duration_ms, worker,
                deferrals, redispatches, moderation, moderation_categories, created_at,
                updated_at)
            SELECT j.id, 'lesson_section', 'h' || g, g, 'succeeded', 'complex', 'm', 'v1',
                1, 1, '[]', '', 0, 0, 0, 0, 0, 0, '', 0, 0, 'passed', '[]', now(), now()
            FROM course_generation_jobs j, generate_series(1, %(n)s) AS g
            WHERE j.id <> %(job)s
            """,
            {"job": job.pk, "n": TASKS_PER_JOB},
        )
        cursor.execute(
            """
            INSERT INTO course_generation_attempts (task_id, number, kind, part, outcome, model,
                input_tokens, cached_tokens, output_tokens, cost_usd, latency_ms, errors,
                saved_cost_usd, saved_ms, batch, created_at)
            SELECT t.id, n, 'first', '', 'ok', 'm', 0, 0, 0, 0, 0, '[]', 0, 0, false, now()
            FROM course_generation_tasks t, generate_series(1, %(per)s) AS n
            WHERE t.job_id <> %(job)s
            """,
            {"job": job.pk, "per": ATTEMPTS_PER_TASK},
        )
        cursor.execute(f"ANALYZE course_generation_jobs, {', '.join(GROWING)}")
    return job


def _scans(sql: str, params: Any) -> list[str]:
    """The growing tables the planner would read whole for this statement."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return [t for t in re.findall(r"Seq Scan on (\w+)", plan) if t in GROWING]


@pytest.fixture
def statements() -> Iterator[list[tuple[str, Any]]]:
    """Every data statement run inside the block, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        if not many and re.match(r"(?is)\s*(select|update|insert|delete|with)\b", sql):
            seen.append((sql, params))
        return execute(sql, params, many, ctx)

    with connection.execute_wrapper(record):
        yield seen


def test_no_statement_of_a_course_scans_the_tasks_or_the_ledger(
    history: CourseGenerationJob,
    teacher: Any,
    base_class: Any,
    statements: list[tuple[str, Any]],
    client_for: Callable[[Any], Any],
) -> None:
    job = finished_job(teacher, base_class)
    client = client_for(teacher)
    for page in ("", "progress/", "course/"):  # what its owner then reads
        assert client.get(f"/api/jobs/{job.pk}/{page}").status_code == 200
    assert client.get("/api/jobs/").status_code == 200
    recovery.reconcile()  # what runs every few seconds: open tasks, lost messages, stuck jobs
    list(HeldContent.objects.filter(moderation__in=MODERATION_REVIEWED))  # the review queue
    ran = list(statements)  # EXPLAIN below goes through the wrapper too
    assert len(ran) > 40  # submit, outline, every task, finalize, the reads

    scanning = {re.sub(r"\s+", " ", sql)[:160]: t for sql, p in ran if (t := _scans(sql, p))}

    assert scanning == {}


def test_a_jobs_ledger_is_read_by_its_indexes(
    history: CourseGenerationJob, teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    ledger = job_attempts(job.pk)

    for reads in (ledger, ledger.filter(outcome=AttemptOutcome.INVALID), ledger.filter(batch=True)):
        assert "Seq Scan on course_generation_attempts" not in reads.explain()
    # the same rows as the join it replaces: the job's tasks' and judge runs' calls, no other's
    joined = GenerationAttempt.objects.filter(Q(task__job=job) | Q(judge_run__job=job))
    assert set(ledger) == set(joined) and ledger.filter(judge_run__isnull=False).exists()
    assert job_run_summary(job)["job_id"] == str(job.pk)
    assert job_batch_saving(job_id=job.pk) == 0
