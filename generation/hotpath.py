"""The per-task statements, written out for PostgreSQL: the profile's hottest path.

Every chord task makes the same few writes. Through the ORM they were nine statements (a claim, a
select, BEGIN, an insert, an update, an aggregate, an update, COMMIT) and about a third of a
worker's CPU went into compiling them. Here they are two round trips:

* `claim_and_load`: one `UPDATE ... RETURNING` that takes the lease, joined to the job's row.
* `record_and_progress`: one statement (in the caller's transaction) that inserts the attempt
  rows, closes the task and stores the job's progress.

The same conditions as the ORM versions in services.py (which other databases use): a task is
claimable when pending or when its lease expired; only the lease holder records a result.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import ForeignKey, JSONField, Model
from psycopg.types.json import Jsonb

from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus

_JOB_FIELDS = (
    "status", "priority", "request", "outline", "organisation_id", "correlation_id", "created_at",
    "progress",
)  # fmt: skip

# Leases on the database's clock (generation/leases.py). A claim is a pick-up: the reconciler's
# back-off for lost messages starts again from zero. Columns named in model field order
# (`_claim_shape`), so the row maps onto the instances without reading its description.
_CLAIM = """
WITH claimed AS (
    UPDATE course_generation_tasks
    SET status = %(running)s,
        lease_expires_at = STATEMENT_TIMESTAMP() + make_interval(secs => %(lease_s)s),
        worker = %(worker)s, runs = runs + 1, started_at = STATEMENT_TIMESTAMP(), redispatches = 0
    WHERE id = %(id)s
      AND (status = %(pending)s
           OR (status = %(running)s AND lease_expires_at < STATEMENT_TIMESTAMP()))
    RETURNING {task_columns}
)
SELECT claimed.*, {job_columns}
FROM claimed JOIN course_generation_jobs j ON j.id = claimed.job_id
"""


@dataclass(frozen=True)
class _Shape:
    sql: str
    task_names: list[str]  # the task's concrete fields, in order: the row's first columns
    task_json: list[int]  # which of them are JSON (Django's psycopg setup loads jsonb as text)
    job_names: list[str]  # the job's loaded fields, in field order: the row's other columns
    job_json: list[int]


@functools.cache
def _claim_shape() -> _Shape:
    qn = connection.ops.quote_name
    task_fields = GenerationTask._meta.concrete_fields
    job_fields = [
        f for f in CourseGenerationJob._meta.concrete_fields if f.attname in {"id", *_JOB_FIELDS}
    ]
    sql = _CLAIM.format(
        task_columns=", ".join(qn(str(f.column)) for f in task_fields),
        job_columns=", ".join(f"j.{qn(str(f.column))} AS job__{f.attname}" for f in job_fields),
    )
    return _Shape(
        sql=sql,
        task_names=[f.attname for f in task_fields],
        task_json=[i for i, f in enumerate(task_fields) if isinstance(f, JSONField)],
        job_names=[f.attname for f in job_fields],
        job_json=[i for i, f in enumerate(job_fields) if isinstance(f, JSONField)],
    )


# One statement (in the caller's transaction, with its rare follow-up): the attempt rows, then
# the task closed if this run still holds it (worker and run number), else the run's usage added
# to its counters (a lost lease: its calls were paid for all the same), then the job's progress. The
# job's row is written after the task's (its UPDATE reads `closed`), the order every task write
# takes. Sub-statements share one snapshot, so the progress counts this task as succeeded by
# hand (`done`): it was running, not succeeded, in the snapshot.
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
    RETURNING job_id
), lost AS (
    UPDATE course_generation_tasks
    SET attempts = attempts + %(attempts)s, input_tokens = input_tokens + %(input_tokens)s,
        cached_tokens = cached_tokens + %(cached_tokens)s,
        output_tokens = output_tokens + %(output_tokens)s, cost_usd = cost_usd + %(cost_usd)s,
        reask_cost_usd = reask_cost_usd + %(reask_cost_usd)s
    WHERE id = %(id)s AND NOT EXISTS (SELECT 1 FROM closed)
    RETURNING status
), progressed AS (
    UPDATE course_generation_jobs AS j
    SET progress = (
        SELECT 100 * (count(*) FILTER (WHERE t.status = %(succeeded)s) + %(done)s)
            / greatest(count(*), 1)
        FROM course_generation_tasks t WHERE t.job_id = j.id
    )
    FROM closed
    WHERE j.id = closed.job_id AND j.status = %(job_running)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM closed), (SELECT count(*) FROM progressed),
    (SELECT status FROM lost), (SELECT count(*) FROM attempts)
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
    shape = _claim_shape()
    with connection.cursor() as cursor:
        cursor.execute(shape.sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(shape.task_names)
    task_values = _loaded(row[:split], shape.task_json)
    task = GenerationTask.from_db("default", shape.task_names, task_values)
    job_values = _loaded(row[split:], shape.job_json)
    task.job = CourseGenerationJob.from_db("default", shape.job_names, job_values)
    # The job's JSON as the database gave it: the key of the parsed models' cache (job_models).
    task.job.json_texts = {  # type: ignore[attr-defined]
        name: text
        for name, text in zip(shape.job_names, row[split:], strict=True)
        if name in ("request", "outline") and isinstance(text, str)
    }
    return task


def _loaded(values: tuple[Any, ...], json_at: list[int]) -> list[Any]:
    out = list(values)
    for i in json_at:
        if isinstance(out[i], str):
            out[i] = json.loads(out[i])
    return out


def record_and_progress(
    *,
    task: GenerationTask,
    worker: str,
    now: datetime,
    status: str,
    fields: dict[str, Any],
    usage: dict[str, Any],
    attempts: list[dict[str, Any]],
) -> tuple[bool, bool, str | None]:
    """Insert the run's attempt rows, close the task and store the job's progress, in one
    statement. Whether it closed the task, whether the job was still running, and when our lease
    was lost (another worker's result stands) the task's status now: the run's usage was added to
    its counters instead, as `ledger.task_usage_add` does (the job's side is the caller's)."""
    params = {
        "id": task.pk,
        "worker": worker,
        "runs": task.runs,
        "now": now,
        "status": status,
        "running": TaskStatus.RUNNING.value,
        "succeeded": TaskStatus.SUCCEEDED.value,
        "done": 1 if status == TaskStatus.SUCCEEDED else 0,
        "job_running": JobStatus.RUNNING.value,
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
        closed, progressed, status_now, _ = cursor.fetchone()
    return bool(closed), bool(progressed), status_now


def _dumps(value: Any) -> str:
    return json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else repr(v))


# The columns a planned task is given one by one; every other column takes the model's default.
_PLANNED = {
    "kind": "text",
    "key": "text",
    "position": "int",
    "tier": "text",
    "model": "text",
    "prompt_version": "text",
    "variant_id": "bigint",
}


def insert_planned(*, job_id: Any, tasks: list[dict[str, Any]]) -> None:
    """INSERT a job's planned tasks in one statement: each row's own columns (`_PLANNED`) from
    one JSON parameter, the rest the defaults a new GenerationTask has, rows that exist already
    skipped (as bulk_create(ignore_conflicts=True), which spent ~4 % of a worker's CPU compiling
    its ~1,300 parameters)."""
    qn = connection.ops.quote_name
    template = GenerationTask(job_id=job_id)
    columns: list[str] = []
    values: list[str] = []
    params: dict[str, Any] = {"rows": Jsonb(tasks)}
    for field in GenerationTask._meta.local_concrete_fields:
        if field.primary_key:
            continue
        if field.attname in _PLANNED:
            columns.append(qn(str(field.column)))
            values.append(f"r.{field.attname}")
            continue
        value = field.get_db_prep_save(field.pre_save(template, True), connection)
        if value is None:
            continue  # nullable without a default: NULL (an untyped NULL parameter is text)
        columns.append(qn(str(field.column)))
        values.append(f"%(c{len(params)})s")
        params[f"c{len(params)}"] = value
    shape = ", ".join(f"{name} {kind}" for name, kind in _PLANNED.items())
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(GenerationTask._meta.db_table)} ({', '.join(columns)}) "
            f"SELECT {', '.join(values)} FROM jsonb_to_recordset(%(rows)s) AS r({shape}) "
            "ON CONFLICT DO NOTHING",
            params,
        )


def insert_together(*objs: Model) -> None:
    """INSERT new rows of different tables in one statement (data-modifying CTEs), as save()
    would one by one: a submit's job, outline task, queue entry and moderation attempt. Foreign
    keys are checked at commit (Django creates them deferrable), so a row may reference one
    inserted beside it; a reference to an earlier row whose key the database assigns (the
    attempt's task) reads it from that row's CTE."""
    qn = connection.ops.quote_name
    statements: list[str] = []
    params: list[Any] = []
    returning: list[tuple[Model, str]] = []
    assigned: dict[int, str] = {}  # id() of an object whose key comes back -> its CTE's key
    for obj in objs:
        meta = obj._meta
        auto = meta.auto_field if obj.pk is None else None
        fields = [f for f in meta.local_concrete_fields if f is not auto]
        columns = ", ".join(qn(str(f.column)) for f in fields)  # concrete: never None
        placeholders = []
        for f in fields:
            target = f.get_cached_value(obj, None) if isinstance(f, ForeignKey) else None
            if target is not None and id(target) in assigned:
                placeholders.append(assigned[id(target)])
                continue
            placeholders.append("%s")
            params.append(f.get_db_prep_save(f.pre_save(obj, True), connection))
        sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES ({', '.join(placeholders)})"
        if auto is not None:
            name = f"r{len(statements)}"
            sql += f" RETURNING {qn(str(auto.column))}"
            returning.append((obj, name))
            assigned[id(obj)] = f"(SELECT {qn(str(auto.column))} FROM {name})"
        statements.append(sql)
    ctes = ", ".join(f"r{i} AS ({sql})" for i, sql in enumerate(statements))
    select = ", ".join(f"(SELECT * FROM {name})" for _, name in returning) or "1"
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {ctes} SELECT {select}", params)
        row = cursor.fetchone()
    for (obj, _), pk in zip(returning, row, strict=False):
        obj.pk = pk
    for obj in objs:
        for f in obj._meta.local_concrete_fields:  # references read from a CTE: set them too
            if isinstance(f, ForeignKey) and getattr(obj, f.attname) is None:
                target = f.get_cached_value(obj, None)
                if target is not None and target.pk is not None:
                    setattr(obj, f.attname, target.pk)
        obj._state.adding, obj._state.db = False, connection.alias
