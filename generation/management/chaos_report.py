"""`make chaos`'s figures: what the provider saw (its call log) against what the database says.

`duplicate_provider_calls` counts calls for a task that had already succeeded; regenerations are
counted apart (their calls carry the version they are for); cancelled jobs are counted apart
from the courses that must complete.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import Count, F, Q, Sum

from generation import assembly
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    JudgeRun,
    JudgeStatus,
    RegenerationRequest,
    RegenerationStatus,
    TaskStatus,
)
from generation.rubric import HEURISTIC_EVALUATOR
from generation.services.ledger import job_cost


def deadlocks_logged(workdir: Path) -> int:
    """Deadlocks PostgreSQL reported to any process of the run (it names them in the error)."""
    return sum(
        log.read_text(errors="replace").count("deadlock detected") for log in workdir.glob("*.log")
    )


def watchdog_failed(jobs: list[UUID]) -> set[UUID]:
    return set(
        CourseGenerationJob.objects.filter(
            pk__in=jobs, status=JobStatus.FAILED, error__startswith="stopped by the watchdog"
        ).values_list("pk", flat=True)
    )


def ledger_vs_job_cost(jobs: list[UUID]) -> Decimal:
    """Sum over jobs of |the job's cost - the cost of its tasks' attempts in the ledger|, at the
    job total's precision (6 places, rounded as the job's total is: `ledger.job_cost`): what the
    ledger paid and what the job says must agree."""
    ledger = dict(
        GenerationAttempt.objects.filter(task__job_id__in=jobs)
        .values_list("task__job_id")
        .annotate(cost=Sum("cost_usd"))
    )
    return sum(
        (
            abs(cost - job_cost(ledger.get(pk) or Decimal(0)))
            for pk, cost in CourseGenerationJob.objects.filter(pk__in=jobs).values_list(
                "pk", "cost_usd"
            )
        ),
        Decimal(0),
    )


def ledger_mismatches(jobs: list[UUID]) -> list[dict[str, Any]]:
    """Each job whose cost disagrees with its ledger, with what it is made of: the exact ledger
    sum, the sum of its tasks' counters, and every task whose counter is not its ledger rows'
    sum (with those rows and the task's regenerations). Written beside the run's logs."""
    step = Decimal("0.000001")  # the half-to-even rounding it used to compare with
    out = []
    for job in CourseGenerationJob.objects.filter(pk__in=jobs).order_by("created_at"):
        rows = list(
            GenerationAttempt.objects.filter(task__job_id=job.pk).values(
                "task_id", "number", "kind", "part", "outcome", "model", "cost_usd", "created_at"
            )
        )
        exact = sum((r["cost_usd"] for r in rows), Decimal(0))
        if job.cost_usd == job_cost(exact):
            continue
        tasks = list(job.tasks.all())
        odd = []
        for task in tasks:
            mine = [r for r in rows if r["task_id"] == task.pk]
            paid = sum((r["cost_usd"] for r in mine), Decimal(0))
            if paid != task.cost_usd:
                odd.append(
                    {
                        "task": task.pk,
                        "kind": task.kind,
                        "key": task.key,
                        "status": task.status,
                        "runs": task.runs,
                        "attempts": task.attempts,
                        "cost_usd": str(task.cost_usd),
                        "ledger_usd": str(paid),
                        "ledger": [{**r, "cost_usd": str(r["cost_usd"])} for r in mine],
                        "regenerations": list(
                            task.regeneration_requests.values(
                                "pk", "source", "status", "version", "runs", "finished_at"
                            )
                        ),
                    }
                )
        out.append(
            {
                "job": str(job.pk),
                "status": job.status,
                "cost_usd": str(job.cost_usd),
                "ledger_exact_usd": str(exact),
                "ledger_half_even_usd": str(exact.quantize(step)),
                "tasks_sum_usd": str(sum((t.cost_usd for t in tasks), Decimal(0))),
                "finished_at": job.finished_at,
                "updated_at": job.updated_at,
                "tasks_not_matching_ledger": odd,
            }
        )
    return out


def report(jobs: list[UUID], call_log: Path, twice: int) -> dict[str, Any]:
    calls = [json.loads(line) for line in call_log.read_text().splitlines() if line.strip()]
    tasks = GenerationTask.objects.filter(job_id__in=jobs)
    succeeded_at: dict[tuple[str, str, str], datetime] = {
        (str(t.job_id), t.kind, t.key): t.finished_at
        for t in tasks.filter(status=TaskStatus.SUCCEEDED)
        if t.finished_at
    }
    # A regeneration (the judge's, or the run's own) calls for a succeeded task on purpose: its
    # calls carry the version number they are for, and are counted apart.
    duplicates = sum(
        1
        for c in calls
        if c.get("variant") is None
        and (when := succeeded_at.get((c["job_id"], c["kind"], c["task_key"])))
        and c["ts"] > when.timestamp()
    )
    statuses = dict(
        CourseGenerationJob.objects.filter(pk__in=jobs)
        .values_list("status")
        .annotate(n=Count("pk"))
    )
    twice_task = tasks.get(pk=twice)
    twice_calls = sum(
        1
        for c in calls
        if (c["job_id"], c["kind"], c["task_key"])
        == (str(twice_task.job_id), twice_task.kind, twice_task.key)
    )
    cancelled = statuses.get(JobStatus.CANCELLED, 0)
    return {
        # Jobs the cancel storm cancelled are not courses that had to complete: apart.
        "submitted": len(jobs),
        "cancelled": cancelled,
        "courses": len(jobs) - cancelled,
        "completed": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "lost_jobs": statuses.get("running", 0) + statuses.get("queued", 0),
        "tasks": tasks.count(),
        "provider_calls": len(calls),
        "ledger_attempts": GenerationAttempt.objects.filter(task__job_id__in=jobs).count(),
        "duplicate_provider_calls": duplicates,
        **_regeneration_report(jobs, calls),
        "double_delivered_task_calls": twice_calls,
        "redispatched_runs": tasks.filter(runs__gt=1).count(),
        "deferred_tasks": tasks.filter(deferrals__gt=0).count(),
        "tasks_not_succeeded": tasks.exclude(job__status=JobStatus.CANCELLED)
        .filter(~Q(status=TaskStatus.SUCCEEDED))
        .count(),
        "ledger_vs_job_cost_diff_usd": float(ledger_vs_job_cost(jobs)),
        # Finalize may run twice (chord body and reconciler): each course is still scored once
        # by the heuristic at finalize (a judge-triggered regeneration scores it again, later).
        "courses_not_scored_once": CourseGenerationJob.objects.filter(
            pk__in=jobs, status=JobStatus.SUCCEEDED
        )
        .annotate(
            evaluations_n=Count(
                "evaluations",
                filter=Q(
                    evaluations__evaluator=HEURISTIC_EVALUATOR,
                    evaluations__created_at__lte=F("finished_at"),
                ),
            )
        )
        .exclude(evaluations_n=1)
        .count(),
        **_judge_report(jobs, calls),
    }


def _regeneration_report(jobs: list[UUID], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Regenerations under the same faults: each request ends, and none is paid again once its
    version was recorded (a call for that version after the request finished)."""
    requests = RegenerationRequest.objects.filter(task__job_id__in=jobs)
    finished = {
        (str(job_id), kind, key, version): when.timestamp()
        for job_id, kind, key, version, when in requests.filter(
            version__isnull=False, finished_at__isnull=False
        ).values_list("task__job_id", "task__kind", "task__key", "version", "finished_at")
        if when is not None
    }
    regeneration_calls = [c for c in calls if c.get("variant") is not None]
    return {
        "regenerations": requests.count(),
        "regenerations_not_succeeded": requests.exclude(
            status=RegenerationStatus.SUCCEEDED
        ).count(),
        "regeneration_calls": len(regeneration_calls),
        "courses_not_reassembled": _courses_not_reassembled(
            requests.values_list("task__job_id", flat=True).distinct()
        ),
        "duplicate_regeneration_calls": sum(
            1
            for c in regeneration_calls
            if (done := finished.get((c["job_id"], c["kind"], c["task_key"], c["variant"])))
            and c["ts"] > done
        ),
    }


def _courses_not_reassembled(jobs: Any) -> int:
    """Regenerated courses whose document is not the one their tasks' outputs assemble now."""
    return sum(
        1
        for job in CourseGenerationJob.objects.filter(pk__in=list(jobs))
        if job.status != JobStatus.SUCCEEDED
        or job.course != assembly.assemble_course(job=job, tasks=list(job.tasks.all()))
    )


def _judge_report(jobs: list[UUID], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The LLM judge under the same faults: every course judged once, no judge call repeated
    after its lesson's run finished (a repeated message must not pay twice)."""
    if not settings.COURSEGEN_JUDGE_ENABLED:
        return {"judge": "off"}
    finished = {
        (str(r.job_id), r.lesson_key): r.finished_at.timestamp()
        for r in JudgeRun.objects.filter(job_id__in=jobs)
        if r.finished_at is not None
    }
    judge_calls = [c for c in calls if c["kind"] == "judge"]
    return {
        "judge_calls": len(judge_calls),
        "duplicate_judge_calls": sum(
            1
            for c in judge_calls
            if (done := finished.get((c["job_id"], c["task_key"]))) and c["ts"] > done
        ),
        "courses_not_judged": CourseGenerationJob.objects.filter(
            pk__in=jobs, status=JobStatus.SUCCEEDED
        )
        .exclude(judge_status=JudgeStatus.DONE)
        .count(),
    }
