"""Read-side figures for the dashboard and /metrics, always over a bounded time window.

Per model and task kind (from course_generation_attempts joined to their tasks): calls, success
rate, latency p50/p95, tokens and cost (the quality judge's calls as task kind "judge"). Per day
(from course_generation_jobs): courses, cost per course, failures, jobs by status, and the
provider error rate. Per course: the heuristic's, the judge's and teachers' scores side by side,
and how often each pair agrees. The content cache: lookups, hit rate by layer, what the hits
saved, false-hit reports and entries.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, Avg, Count, FloatField, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from generation.cache_models import CacheEntry, CacheFalseHit
from generation.models import (
    AttemptOutcome,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    JobStatus,
)
from generation.rubric import HUMAN_EVALUATOR, to_unit
from monitoring.models import CourseGenerationLog


class PercentileCont(Aggregate):
    """PostgreSQL's percentile_cont(p) WITHIN GROUP (ORDER BY expr)."""

    function = "percentile_cont"
    template = "%(function)s(%(percentile)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, percentile: float, **extra: Any) -> None:
        super().__init__(expression, percentile=float(percentile), **extra)


@dataclass(frozen=True)
class ProviderStats:
    model: str
    task_kind: str
    calls: int
    ok: int
    p50_ms: float
    p95_ms: float
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def success_rate(self) -> float:
        return self.ok / self.calls if self.calls else 0.0


def provider_stats(*, since: datetime) -> list[ProviderStats]:
    # A cache hit is a ledger attempt too (kind `cache`), but no provider call: see cache_stats.
    attempts = (
        GenerationAttempt.objects.filter(created_at__gte=since)
        .exclude(kind=CACHE_ATTEMPT)
        .values("model", "task__kind")
    )
    totals = attempts.annotate(
        calls=Count("pk"),
        ok=Count("pk", filter=Q(outcome=AttemptOutcome.OK)),
        input=Sum("input_tokens"),
        cached=Sum("cached_tokens"),
        output=Sum("output_tokens"),
        cost=Sum("cost_usd"),
        **_latency_percentiles(),
    ).order_by("model", "task__kind")
    fallback = {} if connection.vendor == "postgresql" else _python_percentiles(since)
    stats = []
    for row in totals:
        key = (row["model"], row["task__kind"])
        values: dict[str, Any] = dict(row)  # p50/p95 are there on PostgreSQL only
        p50, p95 = fallback.get(key, (values.get("p50"), values.get("p95")))
        stats.append(
            ProviderStats(
                model=row["model"],
                task_kind=row["task__kind"] or "judge",  # the judge's calls have no task
                calls=row["calls"],
                ok=row["ok"],
                p50_ms=float(p50 or 0),
                p95_ms=float(p95 or 0),
                input_tokens=row["input"] or 0,
                cached_tokens=row["cached"] or 0,
                output_tokens=row["output"] or 0,
                cost_usd=row["cost"] or Decimal(0),
            )
        )
    return stats


def _latency_percentiles() -> dict[str, Aggregate]:
    if connection.vendor != "postgresql":
        return {}  # SQLite (the demo) has no percentile_cont: computed in Python instead
    return {"p50": PercentileCont("latency_ms", 0.5), "p95": PercentileCont("latency_ms", 0.95)}


def _python_percentiles(since: datetime) -> dict[tuple[str, str], tuple[float, float]]:
    latencies: dict[tuple[str, str], list[int]] = defaultdict(list)
    rows = (
        GenerationAttempt.objects.filter(created_at__gte=since)
        .exclude(kind=CACHE_ATTEMPT)
        .values_list("model", "task__kind", "latency_ms")
    )
    for model, kind, latency in rows:
        latencies[(model, kind)].append(latency)
    return {key: _p50_p95(values) for key, values in latencies.items()}


def _p50_p95(values: list[int]) -> tuple[float, float]:
    if len(values) == 1:
        return float(values[0]), float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]


CACHE_ATTEMPT = "cache"  # AttemptKind.CACHE


@dataclass(frozen=True)
class CacheStats:
    """The content cache over a window: lookups (from the `cache.hit` / `cache.miss` log rows),
    hits by layer and what they saved (from the ledger), false-hit reports, and entries now."""

    lookups: int
    hits_exact: int
    hits_similar: int
    saved_usd: Decimal
    saved_s: float
    false_hits: int
    entries: int
    entries_embedded: int

    @property
    def hits(self) -> int:
        return self.hits_exact + self.hits_similar

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None


def cache_stats(*, since: datetime) -> CacheStats:
    logs = CourseGenerationLog.objects.filter(
        created_at__gte=since, event__in=("cache.hit", "cache.miss")
    ).aggregate(
        lookups=Count("pk"),
        exact=Count("pk", filter=Q(event="cache.hit", data__layer="exact")),
        similar=Count("pk", filter=Q(event="cache.hit", data__layer="similar")),
    )
    saved = GenerationAttempt.objects.filter(created_at__gte=since, kind=CACHE_ATTEMPT).aggregate(
        usd=Sum("saved_cost_usd"), ms=Sum("saved_ms")
    )
    entries = CacheEntry.objects.filter(expires_at__gt=timezone.now()).aggregate(
        n=Count("pk"), embedded=Count("pk", filter=Q(embedding__isnull=False))
    )
    return CacheStats(
        lookups=logs["lookups"],
        hits_exact=logs["exact"],
        hits_similar=logs["similar"],
        saved_usd=saved["usd"] or Decimal(0),
        saved_s=(saved["ms"] or 0) / 1000,
        false_hits=CacheFalseHit.objects.filter(created_at__gte=since).count(),
        entries=entries["n"],
        entries_embedded=entries["embedded"],
    )


@dataclass(frozen=True)
class DayStats:
    day: date
    by_status: dict[str, int]
    courses: int
    failures: int
    cost_usd: Decimal
    attempts: int
    failed_attempts: int

    @property
    def cost_per_course(self) -> Decimal | None:
        return (
            (self.cost_usd / self.courses).quantize(Decimal("0.000001")) if self.courses else None
        )

    @property
    def error_rate(self) -> float | None:
        return self.failed_attempts / self.attempts if self.attempts else None


def daily_stats(*, days: int = 14, today: date | None = None) -> list[DayStats]:
    """One entry per day, oldest first, including days with nothing on them."""
    today = today or timezone.now().date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=timezone.get_current_timezone())
    by_status: dict[date, dict[str, int]] = defaultdict(dict)
    jobs = CourseGenerationJob.objects.filter(created_at__gte=since)
    for row in (
        jobs.annotate(day=TruncDate("created_at")).values("day", "status").annotate(n=Count("pk"))
    ):
        by_status[row["day"]][row["status"]] = row["n"]
    finished = _finished_per_day(since)
    attempts = _attempts_per_day(since)
    return [
        DayStats(
            day=day,
            by_status=by_status.get(day, {}),
            courses=finished.get(day, {}).get("courses", 0),
            failures=finished.get(day, {}).get("failures", 0),
            cost_usd=finished.get(day, {}).get("cost", Decimal(0)),
            attempts=attempts.get(day, (0, 0))[0],
            failed_attempts=attempts.get(day, (0, 0))[1],
        )
        for day in (first + timedelta(days=n) for n in range(days))
    ]


def _finished_per_day(since: datetime) -> dict[date, dict[str, Any]]:
    rows = (
        CourseGenerationJob.objects.filter(finished_at__gte=since)
        .annotate(day=TruncDate("finished_at"))
        .values("day")
        .annotate(
            courses=Count("pk", filter=Q(status=JobStatus.SUCCEEDED)),
            failures=Count("pk", filter=Q(status=JobStatus.FAILED)),
            cost=Sum("cost_usd", filter=Q(status=JobStatus.SUCCEEDED)),
        )
    )
    return {r["day"]: {**r, "cost": r["cost"] or Decimal(0)} for r in rows}


def _attempts_per_day(since: datetime) -> dict[date, tuple[int, int]]:
    rows = (
        GenerationAttempt.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("pk"), failed=Count("pk", filter=~Q(outcome=AttemptOutcome.OK)))
    )
    return {r["day"]: (r["n"], r["failed"]) for r in rows}


def window_totals(*, since: datetime) -> dict[str, Any]:
    """Courses, failures and cost per course over a window (the /metrics gauges)."""
    row = CourseGenerationJob.objects.filter(finished_at__gte=since).aggregate(
        courses=Count("pk", filter=Q(status=JobStatus.SUCCEEDED)),
        failures=Count("pk", filter=Q(status=JobStatus.FAILED)),
        cost=Sum("cost_usd", filter=Q(status=JobStatus.SUCCEEDED)),
    )
    cost = row["cost"] or Decimal(0)
    return {**row, "cost": cost, "cost_per_course": cost / row["courses"] if row["courses"] else 0}


def quality_scores(*, since: datetime, limit: int = 5000) -> list[float]:
    """Overall quality scores of recent evaluated jobs (`generation/evaluation.py`)."""
    values = (
        CourseGenerationJob.objects.filter(created_at__gte=since, quality_score__isnull=False)
        .order_by("-created_at")
        .values_list("quality_score", flat=True)[:limit]
    )
    return [v for v in values if v is not None]


# --- Human vs judge vs heuristic ------------------------------------------------------------------
@dataclass(frozen=True)
class CourseScores:
    """One course's scores on 0-1 from the three evaluators (None: not scored by it)."""

    job_id: Any
    topic: str
    heuristic: float | None
    judge: float | None
    human: float | None  # the mean of the current course-level ratings
    ratings: int


@dataclass(frozen=True)
class Agreement:
    pair: str
    courses: int  # scored by both
    agree: int  # both on the same side of their pass lines
    mean_abs_diff: float | None

    @property
    def rate(self) -> float | None:
        return self.agree / self.courses if self.courses else None


# What counts as acceptable for each evaluator: the heuristic's and the judge's own thresholds,
# and a teacher's rating of 3 or more out of 5 (0.5 on 0-1).
HUMAN_PASS = to_unit(3)


def course_scores(*, since: datetime, limit: int = 500) -> list[CourseScores]:
    """Recent finished courses that at least two evaluators scored, newest first."""
    humans = (
        CourseEvaluation.objects.filter(
            evaluator=HUMAN_EVALUATOR, task__isnull=True, superseded_at__isnull=True
        )
        .values("job_id")
        .annotate(mean=Avg("overall"), n=Count("pk"))
    )
    recent = humans.filter(job__finished_at__gte=since)
    human = {row["job_id"]: (row["mean"], row["n"]) for row in recent}
    jobs = (
        CourseGenerationJob.objects.filter(finished_at__gte=since, status=JobStatus.SUCCEEDED)
        .filter(Q(judge_score__isnull=False) | Q(pk__in=list(human)))
        .order_by("-finished_at")
        .only("id", "request", "quality_score", "judge_score")[:limit]
    )
    return [
        CourseScores(
            job_id=job.pk,
            topic=job.topic,
            heuristic=job.quality_score,
            judge=job.judge_score,
            human=human.get(job.pk, (None, 0))[0],
            ratings=human.get(job.pk, (None, 0))[1],
        )
        for job in jobs
    ]


def agreement(scores: list[CourseScores]) -> list[Agreement]:
    """For each pair of evaluators: how often they agree a course is acceptable or not."""
    lines = {
        "heuristic": settings.MONITORING_QUALITY_THRESHOLD,
        "judge": settings.COURSEGEN_JUDGE_MIN_OVERALL,
        "human": HUMAN_PASS,
    }
    pairs = (("human", "judge"), ("human", "heuristic"), ("judge", "heuristic"))
    out = []
    for a, b in pairs:
        both = [
            (getattr(s, a), getattr(s, b))
            for s in scores
            if getattr(s, a) is not None and getattr(s, b) is not None
        ]
        agree = sum(1 for x, y in both if (x >= lines[a]) == (y >= lines[b]))
        diff = sum(abs(x - y) for x, y in both) / len(both) if both else None
        out.append(Agreement(f"{a} vs {b}", len(both), agree, diff))
    return out
