"""Generate many courses in-process with injected faults and report how the repairs went.

    manage.py quality_run --courses 20 --faults invalid=0.3

Runs every course eagerly in this process on the offline simulator with the given fault rates,
re-validates every stored output (schema, content checks, duplicates across the course), and
prints the share of valid courses, the mean provider calls per task, the attempts by kind and the
re-ask share of the cost. Exits non-zero unless every course is complete and valid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import F, Sum
from django.test.utils import override_settings

from coursegen.celery import app as celery_app
from generation import services
from generation.checks import course_duplicates
from generation.management.fixtures import simulation_class, teacher_of
from generation.models import REPAIR_KINDS, CourseGenerationJob, GenerationAttempt, JobStatus
from generation.providers import get_provider
from generation.schemas import CourseRequest, Level, TaskKind
from generation.validation import validate_output

TOPICS = (
    "Photosynthesis and plant energy",
    "Fractions and decimals",
    "The French Revolution",
    "Introduction to Python programming",
    "Personal finance and budgeting",
    "Volcanoes and plate tectonics",
    "Public speaking",
    "Machine learning for healthcare data",
    "The human circulatory system",
    "Climate change and its causes",
    "Cybersecurity for small businesses",
    "Statistics for social science",
    "Nutrition and healthy eating",
    "Electricity and circuits",
    "World War II",
    "Organic chemistry reaction mechanisms",
    "Project management fundamentals",
    "Creative writing",
    "Intercultural communication",
    "Probability",
)
AUDIENCES = ("secondary school students", "adult learners", "university students")


@dataclass
class Tally:
    courses: int = 0
    valid: int = 0
    tasks: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    cost: Decimal = Decimal(0)
    reask_cost: Decimal = Decimal(0)
    repair_call_cost: Decimal = Decimal(0)
    input_tokens: int = 0
    duplicates_replaced: int = 0
    cached_tokens: int = 0
    failures: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class Command(BaseCommand):
    help = "Generate N courses with injected faults; report validity, attempts and re-ask cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--courses", type=int, default=20)
        parser.add_argument("--faults", default="invalid=0.3", help="offline fault rates")
        parser.add_argument("--modules", type=int, default=4)
        parser.add_argument("--lessons", type=int, default=3)
        parser.add_argument("--questions", type=int, default=4)
        parser.add_argument("--seed", type=int, default=0, help="offline simulator seed")

    def handle(self, *args: Any, **options: Any) -> None:
        base_class = simulation_class(slug="quality-run", name="Quality run")
        tally = Tally()
        previous = celery_app.conf.task_always_eager
        celery_app.conf.task_always_eager = True
        get_provider.cache_clear()
        try:
            with override_settings(
                COURSEGEN_PROVIDER="offline",
                COURSEGEN_OFFLINE_FAULTS=options["faults"],
                COURSEGEN_OFFLINE_SEED=options["seed"],
                COURSEGEN_OFFLINE_LATENCY_SCALE=0.0,
                COURSEGEN_TRANSIENT_BASE_WAIT_S=0.0,
            ):
                for n in range(options["courses"]):
                    job = services.job_submit(
                        user=teacher_of(base_class=base_class, username=f"quality-run-{n}"),
                        base_class=base_class,
                        request=_request(n, options),
                    )
                    self._count(CourseGenerationJob.objects.get(pk=job.pk), tally)
        finally:
            celery_app.conf.task_always_eager = previous
            get_provider.cache_clear()
        self._report(tally, options)
        if tally.valid != tally.courses:
            raise CommandError(f"{tally.courses - tally.valid} course(s) incomplete or invalid")

    def _count(self, job: CourseGenerationJob, tally: Tally) -> None:
        tasks = list(job.tasks.all())
        attempts = GenerationAttempt.objects.filter(task__job=job)
        tally.repair_call_cost += attempts.filter(kind__in=REPAIR_KINDS).aggregate(
            total=Sum("cost_usd")
        )["total"] or Decimal(0)
        kinds = Counter(attempts.values_list("kind", flat=True))
        tally.duplicates_replaced += _duplicates_replaced(attempts)
        problems = _problems(job, tasks)
        tally.courses += 1
        tally.valid += not problems
        tally.tasks += len(tasks)
        tally.calls.update(kinds)
        tally.cost += job.cost_usd
        tally.reask_cost += job.reask_cost_usd
        tally.input_tokens += job.input_tokens
        tally.cached_tokens += job.cached_tokens
        if job.quality_score is not None:
            tally.scores.append(job.quality_score)
        if problems:
            tally.failures.append(f"{job.topic}: {'; '.join(problems[:3])}")
        calls = sum(kinds.values())
        self.stdout.write(
            f"{tally.courses:3d}. {job.status:9s} {job.topic[:38]:38s} tasks {len(tasks):3d}  "
            f"calls {calls:3d}  ${job.cost_usd:.4f}  re-ask share {job.reask_share:6.1%}  "
            f"quality {job.quality_score if job.quality_score is not None else float('nan'):.2f}"
            + ("" if not problems else "  INVALID")
        )

    def _report(self, tally: Tally, options: dict[str, Any]) -> None:
        calls = sum(tally.calls.values())
        out = self.stdout.write
        out("")
        out(
            f"Offline simulator, faults {options['faults']!r}, {options['modules']}x"
            f"{options['lessons']} courses, seed {options['seed']} (no real LLM was called)"
        )
        out(f"Courses complete and valid: {tally.valid}/{tally.courses}")
        out(f"Mean attempts per task:     {calls / max(tally.tasks, 1):.3f} ({calls} calls)")
        out("Attempts by kind:           " + ", ".join(f"{k} {v}" for k, v in tally.calls.items()))
        cost = tally.cost or Decimal(1)
        out(
            f"Re-ask share of cost:       {tally.reask_cost / cost:.1%} "
            f"(${tally.reask_cost:.4f} of ${tally.cost:.4f}: re-asks, part requests, failed calls)"
        )
        out(
            f"  of which repair calls:    {tally.repair_call_cost / cost:.1%} "
            "(re-asks and part requests only; failed first calls are mostly kept by part repair)"
        )
        out(f"Mean cost per course:       ${tally.cost / max(tally.courses, 1):.4f} at list prices")
        out(f"Duplicate questions replaced at finalize: {tally.duplicates_replaced}")
        if tally.scores:
            out(
                f"Quality score (evaluator):  mean {sum(tally.scores) / len(tally.scores):.3f}, "
                f"lowest {min(tally.scores):.3f} over {len(tally.scores)} course(s)"
            )
        cached = tally.cached_tokens / tally.input_tokens if tally.input_tokens else 0
        out(f"Input tokens from cache:    {cached:.1%}")
        for failure in tally.failures:
            out(f"  invalid: {failure}")


def _request(n: int, options: dict[str, Any]) -> CourseRequest:
    return CourseRequest(
        topic=TOPICS[n % len(TOPICS)],
        audience=AUDIENCES[n % len(AUDIENCES)],
        level=list(Level)[n % len(Level)],
        num_modules=options["modules"],
        lessons_per_module=options["lessons"],
        questions_per_lesson=options["questions"],
    )


def _duplicates_replaced(attempts: Any) -> int:
    """Questions regenerated at finalize: requests made after their task's own run ended."""
    late = attempts.filter(
        task__kind=TaskKind.ASSESSMENT, kind="part", created_at__gt=F("task__finished_at")
    )
    return late.values("task_id", "part").distinct().count()


def _problems(job: CourseGenerationJob, tasks: list[Any]) -> list[str]:
    """Why a course is not complete and valid; empty when it is."""
    if job.status != JobStatus.SUCCEEDED or job.course is None:
        return [job.error or job.status]
    request = job.course_request
    problems = [
        f"{t.kind} {t.key}: {e}"
        for t in tasks
        for e in validate_output(
            t.task_kind, t.output, request=request, context=_context(job, t)
        ).errors
    ]
    assessments = sorted(
        (t for t in tasks if t.kind == TaskKind.ASSESSMENT), key=lambda t: t.position
    )
    duplicates = course_duplicates([(t.key, t.output) for t in assessments], topic=request.topic)
    return problems + [f"duplicate question {d.key} #{d.index}" for d in duplicates]


def _context(job: CourseGenerationJob, task: Any) -> dict[str, Any]:
    from generation.prompts import task_context
    from generation.schemas import CourseOutline

    outline = CourseOutline.model_validate(job.outline) if job.outline else None
    return task_context(task.task_kind, task.key, request=job.course_request, outline=outline)
