"""An experiment's results per variant: judge, teachers' and heuristic scores, cost per task and
per course, latency, failure and repair rates, each a mean over courses with a bootstrap 95%
interval, and a ranking by quality per dollar.

The unit is the course: a job's tasks in the experiment's scope share its variant, so courses are
independent samples. A variant is "better" on the primary metric only when its interval lies
entirely above every other's (below, for cost); otherwise the report says no difference is shown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from generation.models import (
    AttemptOutcome,
    CourseEvaluation,
    CourseGenerationJob,
    Experiment,
    ExperimentVariant,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    TaskStatus,
)
from generation.quality.stats import EMPTY, Interval, bootstrap_mean
from generation.rubric import HUMAN_EVALUATOR, JUDGE_EVALUATOR, Criterion

QUALITY_METRICS = [
    "judge_overall",
    *(f"judge_{c.value}" for c in Criterion),
    "human_rating",
    "heuristic_overall",
]
COST_METRICS = ["cost_per_course", "cost_per_task"]
OPERATIONS_METRICS = ["latency_ms", "failure_rate", "repair_rate"]
METRICS = QUALITY_METRICS + COST_METRICS + OPERATIONS_METRICS
LOWER_IS_BETTER = set(COST_METRICS) | set(OPERATIONS_METRICS)


@dataclass
class VariantResult:
    variant: ExperimentVariant
    courses: int = 0
    tasks: int = 0
    metrics: dict[str, Interval] = field(default_factory=dict)

    @property
    def quality_per_dollar(self) -> float | None:
        """The judge's overall (0-1) per dollar of generation per course."""
        quality, cost = self.metrics["judge_overall"].mean, self.metrics["cost_per_course"].mean
        if quality is None or not cost:
            return None
        return quality / cost


@dataclass
class ExperimentReport:
    experiment: Experiment
    variants: list[VariantResult]
    primary: str
    leader: VariantResult | None  # better than every other on the primary metric, if any

    @property
    def ranking(self) -> list[VariantResult]:
        """Best quality per dollar first; variants without a figure last."""
        return sorted(self.variants, key=lambda r: -(r.quality_per_dollar or -1.0))

    @property
    def ranking_by_primary(self) -> list[VariantResult]:
        """Best mean on the primary metric first (lowest for a cost); the leader, when there
        is one, is first by its interval as well."""
        sign = 1.0 if self.primary in LOWER_IS_BETTER else -1.0
        known = [r for r in self.variants if r.metrics[self.primary].mean is not None]
        unknown = [r for r in self.variants if r.metrics[self.primary].mean is None]
        return sorted(known, key=lambda r: sign * (r.metrics[self.primary].mean or 0.0)) + unknown

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.name,
            "primary_metric": self.primary,
            "leader": self.leader.variant.name if self.leader else None,
            "ranking_by_primary": [r.variant.name for r in self.ranking_by_primary],
            "ranking_by_quality_per_dollar": [r.variant.name for r in self.ranking],
            "variants": [
                {
                    "name": r.variant.name,
                    "prompt_version": r.variant.prompt_version,
                    "model": r.variant.model,
                    "weight": r.variant.weight,
                    "courses": r.courses,
                    "tasks": r.tasks,
                    "quality_per_dollar": r.quality_per_dollar,
                    "metrics": {name: r.metrics[name].as_dict() for name in METRICS},
                }
                for r in self.variants
            ],
        }


def experiment_report(experiment: Experiment, *, seed: int = 0) -> ExperimentReport:
    variants = sorted(experiment.variants.all(), key=lambda v: v.pk)
    samples = _samples(experiment)
    results = []
    for variant in variants:
        per_course = samples.get(variant.pk, {})
        result = VariantResult(variant, courses=len(per_course.get("_course", [])))
        result.tasks = int(sum(per_course.get("_tasks", [])))
        for index, name in enumerate(METRICS):
            values = per_course.get(name, [])
            result.metrics[name] = bootstrap_mean(values, seed=seed + index) if values else EMPTY
        results.append(result)
    primary = str(experiment.primary_metric)  # PrimaryMetric's values are metric names
    return ExperimentReport(experiment, results, primary, _leader(results, primary))


def _leader(results: list[VariantResult], metric: str) -> VariantResult | None:
    lower = metric in LOWER_IS_BETTER
    for candidate in results:
        others = [r for r in results if r is not candidate]
        mine = candidate.metrics[metric]
        if others and all(
            (r.metrics[metric].above(mine) if lower else mine.above(r.metrics[metric]))
            for r in others
        ):
            return candidate
    return None


# --- Per-course samples ---------------------------------------------------------------------------
Samples = dict[int, dict[str, list[float]]]


def _samples(experiment: Experiment) -> Samples:
    """For each variant, each metric's value per course."""
    tasks: list[dict[str, Any]] = [
        dict(row)
        for row in GenerationTask.objects.filter(variant__experiment=experiment).values(
            "pk", "job_id", "variant_id", "status", "cost_usd", "duration_ms"
        )
    ]
    by_job: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for task in tasks:
        by_job[task["job_id"]].append(task)
    repaired = set(
        GenerationAttempt.objects.filter(task_id__in=[t["pk"] for t in tasks])
        .filter(Q(kind__in=["reask", "part"]) | ~Q(outcome=AttemptOutcome.OK))
        .values_list("task_id", flat=True)
    )
    jobs: dict[Any, dict[str, Any]] = {
        j["pk"]: dict(j)
        for j in CourseGenerationJob.objects.filter(pk__in=list(by_job)).values(
            "pk", "status", "cost_usd", "quality_score", "judge_score"
        )
    }
    judged = _judge_criteria(list(by_job))
    rated = _ratings(list(by_job))
    samples: Samples = defaultdict(lambda: defaultdict(list))
    for job_id, job_tasks in by_job.items():
        out = samples[job_tasks[0]["variant_id"]]
        _course(out, jobs[job_id], job_tasks, repaired, judged.get(job_id), rated.get(job_id))
    return samples


def _course(
    out: dict[str, list[float]],
    job: dict[str, Any],
    tasks: list[dict[str, Any]],
    repaired: set[int],
    criteria: dict[str, float] | None,
    rating: float | None,
) -> None:
    out["_course"].append(1.0)
    out["_tasks"].append(float(len(tasks)))
    out["failure_rate"].append(sum(t["status"] == TaskStatus.FAILED for t in tasks) / len(tasks))
    out["repair_rate"].append(sum(t["pk"] in repaired for t in tasks) / len(tasks))
    done = [t for t in tasks if t["status"] == TaskStatus.SUCCEEDED]
    if done:
        out["latency_ms"].append(sum(t["duration_ms"] for t in done) / len(done))
        out["cost_per_task"].append(sum(float(t["cost_usd"]) for t in done) / len(done))
    if job["status"] != JobStatus.SUCCEEDED:
        return
    out["cost_per_course"].append(float(job["cost_usd"]))
    _append(out, "heuristic_overall", job["quality_score"])
    _append(out, "judge_overall", job["judge_score"])
    _append(out, "human_rating", rating)
    for name, value in (criteria or {}).items():
        _append(out, f"judge_{name}", value)


def _append(out: dict[str, list[float]], name: str, value: float | None) -> None:
    if value is not None:
        out[name].append(float(value))


def _judge_criteria(job_ids: Iterable[Any]) -> dict[Any, dict[str, float]]:
    rows = CourseEvaluation.objects.filter(
        job_id__in=job_ids, evaluator=JUDGE_EVALUATOR, task__isnull=True
    ).order_by("created_at")
    return {row.job_id: row.criteria for row in rows}  # the latest wins


def _ratings(job_ids: Iterable[Any]) -> dict[Any, float]:
    """Each course's mean current rating (of the course or any of its tasks), 0-1."""
    values: dict[Any, list[float]] = defaultdict(list)
    for job_id, overall in CourseEvaluation.objects.filter(
        job_id__in=job_ids, evaluator=HUMAN_EVALUATOR, superseded_at__isnull=True
    ).values_list("job_id", "overall"):
        values[job_id].append(overall)
    return {job_id: sum(v) / len(v) for job_id, v in values.items()}
