"""What the admin dashboard and a job's page show. Every query is bounded (days, limits)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organisation
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    GenerationTaskVersion,
    JobStatus,
)
from generation.selectors import capacity_now
from monitoring import charts, metrics
from monitoring.models import Alert, CourseGenerationLog
from ratelimits.selectors import budget_rows

DASHBOARD_DAYS = 14
RECENT_ALERTS = 10
RUNNING_JOBS = 20
JOB_LOG_ROWS = 200
JOB_TASK_ROWS = 500
QUALITY_ROWS = 20


def dashboard_context(*, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    since = now - timedelta(days=DASHBOARD_DAYS)
    days = metrics.daily_stats(days=DASHBOARD_DAYS, today=now.date())
    labels = [d.day.strftime("%m-%d") for d in days]
    statuses = [s.value for s in JobStatus]
    return {
        "platform": True,
        "charts": [
            charts.stacked_bars(
                "chart-jobs-by-status",
                "Jobs by status (created per day)",
                labels,
                {s: [d.by_status.get(s, 0) for d in days] for s in statuses},
            ),
            charts.bars(
                "chart-cost-per-day",
                "Cost per day (USD, finished jobs)",
                labels,
                [float(d.cost_usd) for d in days],
                fmt="${:.3f}",
            ),
            charts.line(
                "chart-error-rate",
                "Provider error rate (failed calls / calls)",
                labels,
                [d.error_rate for d in days],
            ),
            charts.histogram(
                "chart-quality",
                "Quality score distribution",
                metrics.quality_scores(since=since),
            ),
        ],
        "days": list(reversed(days)),
        **_quality_comparison(since),
        "provider_stats": metrics.provider_stats(since=since),
        "cache": metrics.cache_stats(since=since),
        "alerts": list(
            Alert.objects.filter(acknowledged_at__isnull=True).order_by("-last_seen_at")[
                :RECENT_ALERTS
            ]
        ),
        "open_alert_count": Alert.objects.filter(acknowledged_at__isnull=True).count(),
        "running_jobs": list(
            CourseGenerationJob.objects.filter(status=JobStatus.RUNNING)
            .select_related("owner", "organisation")
            .order_by("started_at")[:RUNNING_JOBS]
        ),
        "capacity": capacity_now(),
        "since_days": DASHBOARD_DAYS,
        "budgets": budget_rows(),
    }


def organisation_dashboard_context(*, organisation_ids: list[Any]) -> dict[str, Any]:
    """The dashboard of an organisation administrator: only their organisations' budgets,
    alerts and running jobs; no platform-wide figures (docs/admin.md)."""
    alerts = Alert.objects.filter(
        acknowledged_at__isnull=True, organisation_id__in=organisation_ids
    )
    return {
        "platform": False,
        "scope_names": list(
            Organisation.objects.filter(pk__in=organisation_ids).values_list("name", flat=True)
        ),
        "alerts": list(alerts.order_by("-last_seen_at")[:RECENT_ALERTS]),
        "open_alert_count": alerts.count(),
        "running_jobs": list(
            CourseGenerationJob.objects.filter(
                status=JobStatus.RUNNING, organisation_id__in=organisation_ids
            )
            .select_related("owner", "organisation")
            .order_by("started_at")[:RUNNING_JOBS]
        ),
        "budgets": budget_rows(organisation_ids=organisation_ids),
    }


def _quality_comparison(since: datetime) -> dict[str, Any]:
    scores = metrics.course_scores(since=since)
    return {
        "course_scores": scores[:QUALITY_ROWS],
        "agreement": metrics.agreement(scores),
        "judge_pass": settings.COURSEGEN_JUDGE_MIN_OVERALL,
        "heuristic_pass": settings.MONITORING_QUALITY_THRESHOLD,
    }


def job_story_context(*, job: CourseGenerationJob) -> dict[str, Any]:
    tasks = list(job.tasks.order_by("position")[:JOB_TASK_ROWS])
    served = _served_from_cache(tasks)
    logs = list(
        CourseGenerationLog.objects.filter(
            Q(correlation_id=job.correlation_id) | Q(job=job)
        ).order_by("-created_at")[:JOB_LOG_ROWS]
    )
    logs.reverse()  # the story reads oldest first; the newest rows are the ones kept
    return {
        "job": job,
        "tasks": tasks,
        "timeline": [{**row, "cache": served.get(row["task"].pk)} for row in _timeline(job, tasks)],
        "cached_parts": len(served),
        "cache_saved_usd": sum((c["saved_usd"] for c in served.values()), Decimal(0)),
        "cache_saved_s": sum(c["saved_ms"] for c in served.values()) / 1000,
        "logs": logs,
        "log_limit": JOB_LOG_ROWS,
    }


def _served_from_cache(tasks: list[GenerationTask]) -> dict[int, dict[str, Any]]:
    """The tasks whose last run a cache hit served: the layer (from the hit's log row) and what
    it saved (from its ledger attempt)."""
    ids = [t.pk for t in tasks]
    hits = GenerationAttempt.objects.filter(task_id__in=ids, kind=metrics.CACHE_ATTEMPT)
    served = {
        a.task_id: {"saved_usd": a.saved_cost_usd, "saved_ms": a.saved_ms, "layer": "cache"}
        for a in hits.order_by("created_at")
        if a.task_id is not None
    }
    layers = CourseGenerationLog.objects.filter(task_id__in=list(served), event="cache.hit")
    for task_id, data in layers.order_by("created_at").values_list("task_id", "data"):
        if task_id in served and isinstance(data, dict) and data.get("layer"):
            served[task_id]["layer"] = data["layer"]
    # A task regenerated after its hit is no longer cached content.
    regenerated = set(
        GenerationTaskVersion.objects.filter(task_id__in=list(served)).values_list(
            "task_id", flat=True
        )
    )
    return {k: v for k, v in served.items() if k not in regenerated}


def _timeline(job: CourseGenerationJob, tasks: list[GenerationTask]) -> list[dict[str, Any]]:
    """Each task's bar as percentages of the job's span, for an HTML/CSS Gantt."""
    starts = [t.started_at for t in tasks if t.started_at]
    if not starts:
        return [{"task": t, "left": 0.0, "width": 0.0} for t in tasks]
    origin = min(starts)
    end = max([t.finished_at or timezone.now() for t in tasks if t.started_at] + [origin])
    span = max((end - origin).total_seconds(), 0.001)
    rows = []
    for t in tasks:
        if t.started_at is None:
            rows.append({"task": t, "left": 0.0, "width": 0.0})
            continue
        finish = t.finished_at or timezone.now()
        left = (t.started_at - origin).total_seconds() / span * 100
        width = max((finish - t.started_at).total_seconds() / span * 100, 0.5)
        rows.append({"task": t, "left": round(left, 2), "width": round(min(width, 100 - left), 2)})
    return rows
