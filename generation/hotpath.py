"""The per-task statements, written out for PostgreSQL: the profile's hottest path.

Every chord task makes the same few writes. Through the ORM they were nine statements (a claim, a
select, BEGIN, an insert, an update, an aggregate, an update, COMMIT) and about a third of a
worker's CPU went into compiling them. Here they are two round trips plus the transaction:

* `claim_and_load`: one `UPDATE ... RETURNING` that takes the lease, joined to the job's row.
* `record_and_progress`: one statement that inserts the attempt rows and closes the task, then one
  that stores the job's progress.

The same conditions as the ORM versions in services.py (which other databases use): a task is
claimable when pending or when its lease expired; only the lease holder records a result.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.db import connection
from django.db.models import JSONField, Model
from psycopg.types.json import Jsonb

from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus

M = TypeVar("M", bound=Model)
_JOB_FIELDS = (
    "status", "priority", "request", "outline", "organisation_id", "correlation_id", "created_at",
    "progress",
)  # fmt: skip

# Leases on the database's clock (generation/leases.py). A claim is a pick-up: the reconciler's
# back-off for lost messages starts again from zero.
_CLAIM = f"""
WITH claimed AS (
    UPDATE course_generation_tasks
    SET status = %(running)s,
        lease_expires_at = STATEMENT_TIMESTAMP() + make_interval(secs => %(lease_s)s),
        worker = %(worker)s, runs = runs + 1, started_at = STATEMENT_TIMESTAMP(), redispatches = 0
    WHERE id = %(id)s
      AND (status = %(pending)s
           OR (status = %(running)s AND lease_expires_at < STATEMENT_TIMESTAMP()))
    RETURNING *
)
SELECT claimed.*, {", ".join(f"j.{f} AS job__{f}" for f in _JOB_FIELDS)}
FROM claimed JOIN course_generation_jobs j ON j.id = claimed.job_id
"""

_RECORD = """
WITH attempts AS (
    INSERT INTO course_generation_attempts (task_id, number, kind, part, outcome, model,
        input_tokens, cached_tokens, output_tokens, cost_usd, latency_ms, errors, saved_cost_usd,
        saved_ms, batch, created_at)
    SELECT %(id)s, a.number, a.kind, a.part, a.outcome, a.model, a.input_tokens,
        a.cached_tokens, a.output_tokens, a.cost_usd, a.latency_ms, a.errors, a.saved_cost_usd,
        a.saved_ms, a.batch, %(now)s
    FROM jsonb_to_recordset(%(attempt_rows)s) AS a(number int, kind text, part text, outcome text,
        model text, input_tokens int, cached_tokens int, output_tokens int, cost_usd numeric,
        latency_ms int, errors jsonb, saved_cost_usd numeric, saved_ms int, batch boolean)
    RETURNING 1
), closed AS (
    UPDATE course_generation_tasks
    SET status = %(status)s, output = %(output)s, model = %(model)s,
        moderation = %(moderation)s, moderation_categories = %(moderation_categories)s,
        validation_errors = %(validation_errors)s, error = %(error)s,
        duration_ms = %(duration_ms)s, lease_expires_at = NULL, finished_at = %(now)s,
        attempts = attempts + %(attempts)s, input_tokens = input_tokens + %(input_tokens)s,
        cached_tokens = cached_tokens + %(cached_tokens)s,
        output_tokens = output_tokens + %(output_tokens)s, cost_usd = cost_usd + %(cost_usd)s,
        reask_cost_usd = reask_cost_usd + %(reask_cost_usd)s
    WHERE id = %(id)s AND status = %(running)s AND worker = %(worker)s AND runs = %(runs)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM closed), (SELECT count(*) FROM attempts)
"""

_PROGRESS = """
UPDATE course_generation_jobs AS j SET progress = c.progress
FROM (
    SELECT 100 * count(*) FILTER (WHERE status = %(succeeded)s) / greatest(count(*), 1) AS progress
    FROM course_generation_tasks WHERE job_id = %(job)s
) AS c
WHERE j.id = %(job)s AND j.status = %(job_running)s
"""


def claim_and_load(*, task_id: int, worker: str, lease_s: float) -> GenerationTask | None:
    """Take the task's lease and load it with its job; None when it is not claimable. The row's
    `runs` is the claim's run number (with `worker`, the fencing token of its writes)."""
    params: dict[str, Any] = {
        "id": task_id,
        "worker": worker,
        "lease_s": lease_s,
        "pending": TaskStatus.PENDING.value,
        "running": TaskStatus.RUNNING.value,
    }
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, params)
        row = cursor.fetchone()
        if row is None:
            return None
        columns = dict(zip((c.name for c in cursor.description), row, strict=True))
    task = _instance(GenerationTask, columns)
    job_columns = {name: columns[f"job__{name}"] for name in _JOB_FIELDS}
    task.job = _instance(CourseGenerationJob, {**job_columns, "id": task.job_id})
    return task


def _instance(model: type[M], columns: dict[str, Any]) -> M:
    """A model instance from raw columns (the others stay deferred), as the ORM would build it:
    from_db wants values in field order, and Django's psycopg setup loads jsonb as text."""
    names, values = [], []
    for field in model._meta.concrete_fields:
        if field.attname in columns:
            value = columns[field.attname]
            if isinstance(field, JSONField) and isinstance(value, str):
                value = json.loads(value)
            names.append(field.attname)
            values.append(value)
    return model.from_db("default", names, values)


def record_and_progress(
    *,
    task: GenerationTask,
    worker: str,
    now: datetime,
    status: str,
    fields: dict[str, Any],
    usage: dict[str, Any],
    attempts: list[dict[str, Any]],
) -> tuple[bool, bool]:
    """Close the task and store the job's progress; call inside a transaction. Whether it closed
    the task (False when our lease was lost and another worker's result stands; the attempt rows
    are inserted anyway), and whether the job was still running."""
    params = {
        "id": task.pk,
        "worker": worker,
        "runs": task.runs,
        "now": now,
        "status": status,
        "running": TaskStatus.RUNNING.value,
        "attempt_rows": Jsonb(attempts, dumps=_dumps),
        "output": Jsonb(fields["output"]) if fields["output"] is not None else None,
        "validation_errors": Jsonb(fields["validation_errors"]),
        "model": fields["model"],
        "moderation": fields["moderation"],
        "moderation_categories": Jsonb(fields["moderation_categories"]),
        "error": fields["error"],
        "duration_ms": fields["duration_ms"],
        **usage,
    }
    with connection.cursor() as cursor:
        cursor.execute(_RECORD, params)
        closed = bool(cursor.fetchone()[0])
        if not closed:
            return False, False
        cursor.execute(
            _PROGRESS,
            {
                "job": task.job_id,
                "succeeded": TaskStatus.SUCCEEDED.value,
                "job_running": JobStatus.RUNNING.value,
            },
        )
        return True, cursor.rowcount > 0


def _dumps(value: Any) -> str:
    return json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else repr(v))


def insert_together(*objs: Model) -> None:
    """INSERT new rows of different tables in one statement (data-modifying CTEs), as save()
    would one by one: a submit's job, outline task and queue entry. Foreign keys are checked at
    commit (Django creates them deferrable), so a row may reference one inserted beside it."""
    qn = connection.ops.quote_name
    statements: list[str] = []
    params: list[Any] = []
    returning: list[tuple[Model, str]] = []
    for obj in objs:
        meta = obj._meta
        auto = meta.auto_field if obj.pk is None else None
        fields = [f for f in meta.local_concrete_fields if f is not auto]
        columns = ", ".join(qn(str(f.column)) for f in fields)  # concrete: never None
        values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
        sql = (
            f"INSERT INTO {qn(meta.db_table)} ({columns}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
        if auto is not None:
            sql += f" RETURNING {qn(str(auto.column))}"
            returning.append((obj, f"r{len(statements)}"))
        statements.append(sql)
        params.extend(values)
    ctes = ", ".join(f"r{i} AS ({sql})" for i, sql in enumerate(statements))
    select = ", ".join(f"(SELECT * FROM {name})" for _, name in returning) or "1"
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {ctes} SELECT {select}", params)
        row = cursor.fetchone()
    for (obj, _), pk in zip(returning, row, strict=False):
        obj.pk = pk
    for obj in objs:
        obj._state.adding, obj._state.db = False, connection.alias
