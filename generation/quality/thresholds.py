"""Thresholds that act: when a lesson's verdict is below them, which of its tasks to regenerate
and with what instruction, and the alert when a second verdict is still below.

A lesson is below threshold when any criterion scores under its minimum
(COURSEGEN_JUDGE_MIN_SCORES, 1-5) or the verdict's overall (0-1) is under
COURSEGEN_JUDGE_MIN_OVERALL. The tasks regenerated are those where the failing criteria's
evidence was found (a quotation from a question points at the assessment), else the part the
rubric names for the criterion (question quality: the assessment; the others: the section).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings

from generation import regeneration
from generation.models import (
    REGENERATION_OPEN,
    GenerationTask,
    JudgeRun,
    RegenerationRequest,
    RegenerationSource,
    RegenerationStatus,
)
from generation.providers import Provider
from generation.rubric import RUBRIC, Criterion, LessonVerdict, Part
from generation.schemas import TaskKind
from generation.services import GenerationError
from monitoring.models import Alert, AlertKind
from monitoring.services import alert_raise

logger = logging.getLogger("coursegen.quality")
INSTRUCTION_MAX_CHARS = 1000  # what a teacher's regeneration instruction may hold, too
_PART_KINDS = {Part.SECTION: TaskKind.LESSON_SECTION, Part.QUESTIONS: TaskKind.ASSESSMENT}


@dataclass(frozen=True)
class Thresholds:
    minimum: dict[Criterion, int]
    overall: float

    @classmethod
    def from_settings(cls) -> Thresholds:
        configured = settings.COURSEGEN_JUDGE_MIN_SCORES
        return cls(
            minimum={c: int(configured.get(c.value, 1)) for c in Criterion},
            overall=float(settings.COURSEGEN_JUDGE_MIN_OVERALL),
        )

    def failing(self, verdict: LessonVerdict) -> list[Criterion]:
        return [c for c in Criterion if verdict.score_of(c).score < self.minimum[c]]

    def below(self, verdict: LessonVerdict) -> bool:
        return bool(self.failing(verdict)) or verdict.overall < self.overall


def reasons(verdict: LessonVerdict, limits: Thresholds) -> list[str]:
    """The judge's reasons for each failing criterion (and the overall, if that fails)."""
    lines = []
    for criterion in limits.failing(verdict):
        scored = verdict.score_of(criterion)
        quote = f' (evidence: "{scored.evidence[0]}")' if scored.evidence else ""
        lines.append(
            f"{RUBRIC[criterion].title} {scored.score}/5, minimum "
            f"{limits.minimum[criterion]}: {scored.justification}{quote}"
        )
    if verdict.overall < limits.overall:
        lines.append(f"overall {verdict.overall:.2f}, minimum {limits.overall:.2f}")
    return lines


def instruction(verdict: LessonVerdict, limits: Thresholds) -> str:
    """The regeneration's instruction: the judge's feedback, bounded like a teacher's."""
    text = "A reviewer found this part below the quality bar. " + " ".join(
        [*reasons(verdict, limits), f"Most important: {verdict.improvement}"]
    )
    return text[:INSTRUCTION_MAX_CHARS]


def regeneration_targets(
    verdict: LessonVerdict, limits: Thresholds, *, run: JudgeRun
) -> list[GenerationTask]:
    """The lesson's tasks to regenerate, in reading order (section before assessment)."""
    tasks = {
        t.kind: t
        for t in GenerationTask.objects.filter(
            job_id=run.job_id,
            key=run.lesson_key,
            kind__in=[TaskKind.LESSON_SECTION, TaskKind.ASSESSMENT],
        )
    }
    failing = limits.failing(verdict) or list(Criterion)  # only the overall: the weakest parts
    kinds = {_kind_for(c, verdict, tasks) for c in failing}
    return [tasks[k] for k in (TaskKind.LESSON_SECTION, TaskKind.ASSESSMENT) if k in kinds]


def _kind_for(
    criterion: Criterion, verdict: LessonVerdict, tasks: dict[str, GenerationTask]
) -> TaskKind:
    """Where the evidence is: a quotation found in the questions points at the assessment."""
    assessment = tasks.get(TaskKind.ASSESSMENT)
    questions = str((assessment.output or {}) if assessment else "").lower()
    section = tasks.get(TaskKind.LESSON_SECTION)
    prose = str((section.output or {}) if section else "").lower()
    for quote in verdict.score_of(criterion).evidence:
        needle = quote.lower().strip()[:80]
        if needle and needle in questions and needle not in prose:
            return TaskKind.ASSESSMENT
        if needle and needle in prose:
            return TaskKind.LESSON_SECTION
    return _PART_KINDS[RUBRIC[criterion].part]


@dataclass(frozen=True)
class Regenerations:
    """Where a lesson's regenerations by the judge stand."""

    waiting_s: float | None  # some are not finished: look again after this many seconds
    succeeded: list[str]  # the kinds that got a new version
    batch: bool = False  # one waits for a Batch API line: its regeneration wakes the run


def regenerations_advance(*, run: JudgeRun, instruction: str, provider: Provider) -> Regenerations:
    """Make (once) and run a regeneration request (source `judge`, no user) for each kind the
    run claimed, through the regeneration path (generation/regeneration.py): its lease, its
    deferrals, one regeneration of a course at a time. A request another worker is running, or
    one that must wait, is looked at again later."""
    waiting: float | None = None
    succeeded = []
    batch = False
    for kind in run.regenerated:
        request = _request_for(run, kind, instruction)
        if request is None:
            continue
        if request.status in REGENERATION_OPEN:
            outcome = regeneration.regeneration_run(request_id=request.pk, provider=provider)
            request.refresh_from_db(fields=["status"])
            if request.status in REGENERATION_OPEN:
                batch = batch or outcome.batch
                waiting = max(waiting or 0.0, outcome.retry_in or regeneration.BUSY_RETRY_S)
                continue
        if request.status == RegenerationStatus.SUCCEEDED:
            succeeded.append(kind)
    return Regenerations(waiting, succeeded, batch=batch)


def _request_for(run: JudgeRun, kind: str, instruction: str) -> RegenerationRequest | None:
    """This run's request for the lesson's task of `kind`: the one made earlier (a resumed run),
    or a new one; None when the task cannot be regenerated now (a teacher's request is open)."""
    task = GenerationTask.objects.get(job_id=run.job_id, key=run.lesson_key, kind=kind)
    earlier = (
        RegenerationRequest.objects.filter(
            task=task, source=RegenerationSource.JUDGE, created_at__gte=run.created_at
        )
        .order_by("-pk")
        .first()
    )
    if earlier is not None:
        return earlier
    try:
        return regeneration.regeneration_request_create(
            task_id=task.pk,
            by=None,
            source=RegenerationSource.JUDGE,
            instruction=instruction,
            send=False,  # run here, now; the reconciler sends it if this worker dies
        )
    except GenerationError as exc:
        logger.warning("the judge could not regenerate task %s: %s", task.pk, exc)
        return None


def alert_below(*, run: JudgeRun, verdict: LessonVerdict, limits: Thresholds) -> Alert:
    why = reasons(verdict, limits)
    regenerated = f" after regenerating {', '.join(run.regenerated)}" if run.regenerated else ""
    return alert_raise(
        kind=AlertKind.QUALITY_BELOW_THRESHOLD,
        subject=f"judge:{run.job_id}:{run.lesson_key}",
        message=(
            f"The judge scored lesson {run.lesson_key} of job {run.job_id} "
            f"({run.job.topic}) below threshold{regenerated}: " + "; ".join(why)
        )[:4000],
        data={
            "job_id": str(run.job_id),
            "lesson": run.lesson_key,
            "overall": verdict.overall,
            "scores": {c.value: verdict.score_of(c).score for c in Criterion},
            "reasons": why,
            "regenerated": run.regenerated,
        },
        organisation_id=run.job.organisation_id,  # its administrators see it (docs/admin.md)
    )
