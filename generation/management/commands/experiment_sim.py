"""`manage.py experiment_sim --courses N`: an A/B experiment run end to end on the offline
simulator, in-process, to show that the experiment machinery finds a real difference and does
not invent one.

The experiment covers lesson sections and has two variants: `control` (the default prompt, v2)
and `candidate` (prompt v3, which asks for one worked example per learning objective). The
simulator follows that instruction as a model would (generation/providers/offline/content/
rules.py), so the candidate is built to be better on one criterion, objectives taught, which the
simulated judge reads from the examples. Jobs are assigned by id like real traffic; every course
goes through the real pipeline: planning with variants, generation, finalize, the judge, the
report with bootstrap intervals. With `--identical` both variants use the default prompt: any
difference the report claims is a false one. `--seeds K` repeats the run K times (the simulator's
seed and the topics change). The last line is JSON: `better_variant_detected`, and with
`--identical`, `false_differences`. The simulator's numbers are not evidence about real models.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.test import override_settings

from coursegen.celery import app as celery_app
from generation import services
from generation.management.fixtures import simulation_class, teacher_of
from generation.models import CourseGenerationJob, Experiment
from generation.providers import get_provider
from generation.quality import experiments, report
from generation.schemas import CourseRequest, TaskKind

CRITERION = "judge_objectives_taught"  # where the candidate is built to be better
SUBJECTS = (
    "Rivers and valleys", "Photosynthesis", "Fractions", "The Roman Republic", "Budgeting",
    "Simple circuits", "Persuasive writing", "Volcanoes", "Probability", "The water cycle",
    "Healthy eating", "Plate tectonics", "Python lists", "Weather and climate", "Recycling",
)  # fmt: skip


class Command(BaseCommand):
    help = "Run an A/B experiment on the offline simulator and report what it detects."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--courses", type=int, default=100, help="courses per run")
        parser.add_argument("--identical", action="store_true", help="two identical variants")
        parser.add_argument("--seeds", type=int, default=1, help="independent runs")
        parser.add_argument("--modules", type=int, default=1)
        parser.add_argument("--lessons", type=int, default=2)
        parser.add_argument("--questions", type=int, default=2)
        parser.add_argument("--keep", action="store_true", help="keep the jobs and experiments")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["courses"] < 4 or options["seeds"] < 1:
            raise CommandError("--courses must be at least 4 and --seeds at least 1")
        started = time.monotonic()
        runs = [self._run(seed, options) for seed in range(options["seeds"])]
        detected = [
            r["candidate_above"] and r["leader"] == "candidate" and r["ranking"][0] == "candidate"
            for r in runs
        ]
        summary = {
            "courses": options["courses"],
            "seeds": options["seeds"],
            "identical": options["identical"],
            "criterion": CRITERION,
            "better_variant": None if options["identical"] else "candidate",
            "better_variant_detected": (not options["identical"]) and all(detected),
            "detected_runs": sum(detected),
            "false_differences": sum(r["leader"] is not None for r in runs)
            if options["identical"]
            else None,
            "simulated": True,
            "runs": runs,
            "wall_s": round(time.monotonic() - started, 1),
        }
        self.stdout.write(json.dumps(summary))

    # --- one run --------------------------------------------------------------------------------
    def _run(self, seed: int, options: dict[str, Any]) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:8]
        experiment = experiments.experiment_create(
            name=f"sim-{tag}-seed{seed}",
            task_kind=TaskKind.LESSON_SECTION,
            variants=[
                experiments.VariantSpec("control"),
                experiments.VariantSpec(
                    "candidate", prompt_version="" if options["identical"] else "v3"
                ),
            ],
            primary_metric=CRITERION,
            description="experiment_sim: offline simulator",
        )
        experiments.experiment_start(experiment_id=experiment.pk)
        base_class = simulation_class(slug="experiment-sim", name="Experiment simulation")
        job_ids = []
        with _in_process(seed):
            for n in range(options["courses"]):
                job = services.job_submit(
                    user=teacher_of(base_class=base_class, username=f"experiment-sim-{n}"),
                    base_class=base_class,
                    request=_request(n, seed, tag, options),
                )
                job_ids.append(job.pk)
        experiments.experiment_stop(experiment_id=experiment.pk)
        result = report.experiment_report(experiment, seed=seed)
        self._table(seed, result)
        run = _summary(seed, result)
        if not options["keep"]:
            _clean_up(experiment, job_ids)
        return run

    def _table(self, seed: int, result: report.ExperimentReport) -> None:
        out = self.stdout.write
        out(f"seed {seed}: experiment {result.experiment.name} ({result.primary} is primary)")
        out(
            f"  {'variant':<10} {'courses':>7} {CRITERION:>32} {'judge overall':>22} "
            f"{'heuristic':>9} {'$/course':>9} {'$/task':>9} {'ms/task':>8} {'fail':>5} "
            f"{'repair':>6} {'quality/$':>9}"
        )
        for r in result.variants:
            m = r.metrics
            out(
                f"  {r.variant.name:<10} {r.courses:>7} {_ci(m[CRITERION]):>32} "
                f"{_ci(m['judge_overall']):>22} {_num(m['heuristic_overall'].mean, 3):>9} "
                f"{_num(m['cost_per_course'].mean, 5):>9} {_num(m['cost_per_task'].mean, 6):>9} "
                f"{_num(m['latency_ms'].mean, 0):>8} {_num(m['failure_rate'].mean, 3):>5} "
                f"{_num(m['repair_rate'].mean, 3):>6} {_num(r.quality_per_dollar, 0):>9}"
            )
        leader = result.leader.variant.name if result.leader else "none (intervals overlap)"
        primary = ", ".join(r.variant.name for r in result.ranking_by_primary)
        per_dollar = ", ".join(r.variant.name for r in result.ranking)
        out(
            f"  better on {result.primary}: {leader}; ranking on it: {primary}; "
            f"by quality per dollar: {per_dollar}"
        )


def _summary(seed: int, result: report.ExperimentReport) -> dict[str, Any]:
    by_name = {r.variant.name: r for r in result.variants}
    control, candidate = by_name["control"], by_name["candidate"]
    return {
        "seed": seed,
        "experiment": result.experiment.name,
        "leader": result.leader.variant.name if result.leader else None,
        "candidate_above": candidate.metrics[CRITERION].above(control.metrics[CRITERION]),
        "control_above": control.metrics[CRITERION].above(candidate.metrics[CRITERION]),
        "courses": {"control": control.courses, "candidate": candidate.courses},
        CRITERION: {
            "control": control.metrics[CRITERION].as_dict(),
            "candidate": candidate.metrics[CRITERION].as_dict(),
        },
        "ranking": [r.variant.name for r in result.ranking_by_primary],
        "ranking_by_quality_per_dollar": [r.variant.name for r in result.ranking],
    }


def _ci(interval: Any) -> str:
    if interval.mean is None:
        return "-"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@contextmanager
def _in_process(seed: int) -> Iterator[None]:
    """Eager Celery, the offline simulator with this seed, the judge on, no latency."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    get_provider.cache_clear()
    try:
        with override_settings(
            COURSEGEN_PROVIDER="offline",
            COURSEGEN_OFFLINE_SEED=seed,
            COURSEGEN_OFFLINE_FAULTS="",
            COURSEGEN_OFFLINE_LATENCY_SCALE=0.0,
            COURSEGEN_JUDGE_ENABLED=True,
        ):
            yield
    finally:
        celery_app.conf.task_always_eager = previous
        get_provider.cache_clear()


def _request(n: int, seed: int, tag: str, options: dict[str, Any]) -> CourseRequest:
    # A topic of its own per course: the simulator draws its content from the topic.
    return CourseRequest(
        topic=f"{SUBJECTS[n % len(SUBJECTS)]}, part {n // len(SUBJECTS) + 1} ({tag}{seed})",
        num_modules=options["modules"],
        lessons_per_module=options["lessons"],
        questions_per_lesson=options["questions"],
    )


def _clean_up(experiment: Experiment, job_ids: list[Any]) -> None:
    """The simulation's rows go: jobs first (their tasks point at the variants)."""
    CourseGenerationJob.objects.filter(pk__in=job_ids).delete()
    experiment.delete()
