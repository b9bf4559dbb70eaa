"""The judge's runs on a finished course: one run per lesson, claimed like a task, then the
course's evaluation once every lesson has its verdict.

After finalize, `job_judge_start` plans a run per lesson and sends them (Celery: judge_lesson).
`judge_run_execute` claims one run with a lease (a repeated message finds it claimed or done and
pays for nothing), asks for a verdict (round 1), and when the lesson is below the thresholds
regenerates the tasks the verdict points at, once, with the judge's feedback as the instruction,
and asks again (round 2); still below, it raises `quality_below_threshold` with the judge's
reasons. Each round resumes from what the rows say (a crash between rounds repeats no paid
call that was recorded). `job_judge_close` writes the course's evaluation exactly once.

Every judge call is a ledger row of kind `judge` on its run; the job's `judge_cost_usd` adds
them up apart from the generation cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce, Now

from generation import messages, services
from generation.leases import db_now, db_now_plus
from generation.llm import BatchReplay
from generation.models import (
    BatchRequest,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationTask,
    JobStatus,
    JudgeRun,
    JudgeRunStatus,
    JudgeStatus,
    RegenerationSource,
    TaskStatus,
)
from generation.providers import Provider, get_provider
from generation.quality import judge, prompt, thresholds
from generation.rubric import JUDGE_EVALUATOR, LessonVerdict
from generation.schemas import TaskKind
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.quality")
RUN_TERMINAL = (JudgeRunStatus.SUCCEEDED, JudgeRunStatus.FAILED)


# --- Planning -------------------------------------------------------------------------------------
def job_judge_start(*, job_id: UUID) -> list[int]:
    """Plan one run per lesson of a course waiting for the judge, and send the pending ones."""
    with transaction.atomic():
        job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
        if job.status != JobStatus.SUCCEEDED or job.judge_status not in (
            JudgeStatus.PENDING,
            JudgeStatus.RUNNING,
        ):
            return []
        sections = GenerationTask.objects.filter(
            job=job, kind=TaskKind.LESSON_SECTION, status=TaskStatus.SUCCEEDED
        ).order_by("position")
        JudgeRun.objects.bulk_create(
            [JudgeRun(job=job, lesson_key=t.key, task=t) for t in sections],
            ignore_conflicts=True,
        )
        if job.judge_status != JudgeStatus.RUNNING:
            job.judge_status = JudgeStatus.RUNNING
            job.save(update_fields=["judge_status", "updated_at"])
        pending = JudgeRun.objects.filter(job=job, status=JudgeRunStatus.PENDING)
        run_ids = list(pending.values_list("pk", flat=True))
        pending.update(dispatched_at=Now())
        transaction.on_commit(lambda: send_runs(run_ids))
    if not run_ids:
        job_judge_close(job_id=job_id)
    return run_ids


def send_runs(run_ids: list[int]) -> None:
    judge_lesson = messages.task(messages.JUDGE_LESSON)
    for run_id in run_ids:
        judge_lesson.apply_async(args=(run_id,), priority=messages.judge_priority())


# --- One lesson -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Round:
    verdict: LessonVerdict | None
    defer_s: float | None = None
    error: str = ""
    lease_lost: bool = False
    batch: bool = False  # the round waits for a Batch API line (COURSEGEN_BATCH_JUDGE)


def judge_run_execute(
    *, run_id: int, provider: Provider | None = None, worker: str | None = None
) -> float | None:
    """Judge one lesson (and re-judge it after one regeneration); a delay when deferred."""
    worker = worker or f"judge:{services.worker_name()}"
    run = _claim(run_id=run_id, worker=worker)
    if run is None:
        return None
    provider = provider or get_provider()
    try:
        return _advance(run, worker, provider)
    except Exception as exc:  # a bug must not leave the run claimed, nor the course unjudged
        logger.exception("judge run %s crashed", run_id)
        _finish(
            run,
            worker,
            status=JudgeRunStatus.FAILED,
            error=f"internal error: {type(exc).__name__}; see the logs",
        )
        return None


def _advance(run: JudgeRun, worker: str, provider: Provider) -> float | None:
    limits = thresholds.Thresholds.from_settings()
    verdict = _latest_verdict(run) if run.rounds else None
    if run.rounds == 0:
        first = _judge_round(run, worker, provider, number=1)
        if first.batch:
            return _wait_for_batch(run, worker)
        if first.verdict is None:
            return _end_without_verdict(run, worker, first)
        verdict = first.verdict
    assert verdict is not None  # rounds >= 1 has a recorded verdict
    if run.rounds == 1 and limits.below(verdict):
        regenerations = _regenerate_once(run, verdict, provider)
        if regenerations is not None and regenerations.batch:
            return _wait_for_batch(run, worker)  # the regeneration's line wakes the run
        if regenerations is not None and regenerations.waiting_s is not None:
            return _wait(run, worker, regenerations.waiting_s)
        if regenerations is not None and regenerations.succeeded:
            second = _judge_round(run, worker, provider, number=2)
            if second.batch:
                return _wait_for_batch(run, worker)
            if second.verdict is None:
                return _end_without_verdict(run, worker, second)
            verdict = second.verdict
    below = limits.below(verdict)
    if below:
        thresholds.alert_below(run=run, verdict=verdict, limits=limits)
    _finish(run, worker, status=JudgeRunStatus.SUCCEEDED, score=verdict.overall, below=below)
    job_judge_close(job_id=run.job_id)
    return None


def _claim(*, run_id: int, worker: str) -> JudgeRun | None:
    """Take the run's lease on the database's clock (generation/leases.py); the claim's run
    number fences a worker whose lease was taken over."""
    claimable = Q(status=JudgeRunStatus.PENDING) | Q(
        status=JudgeRunStatus.RUNNING, lease_expires_at__lt=Now()
    )
    won = JudgeRun.objects.filter(claimable, pk=run_id).update(
        status=JudgeRunStatus.RUNNING,
        worker=worker,
        runs=F("runs") + 1,
        started_at=Now(),
        lease_expires_at=db_now_plus(settings.COURSEGEN_TASK_LEASE_S),
    )
    return JudgeRun.objects.select_related("job", "task").get(pk=run_id) if won else None


def _owned(run: JudgeRun, worker: str) -> QuerySet[JudgeRun]:
    return JudgeRun.objects.filter(
        pk=run.pk, status=JudgeRunStatus.RUNNING, worker=worker, runs=run.runs
    )


def _lease_renew(run: JudgeRun, worker: str) -> bool:
    return bool(
        _owned(run, worker).update(lease_expires_at=db_now_plus(settings.COURSEGEN_TASK_LEASE_S))
    )


def _judge_round(run: JudgeRun, worker: str, provider: Provider, *, number: int) -> _Round:
    run.job.refresh_from_db(fields=["course", "urgency"])  # round 2 reads the regenerated lesson
    lesson = judge.JudgedLesson.from_course(run.job.course or {}, run.lesson_key)

    def ask(batch: BatchReplay | None) -> judge.JudgeOutcome:
        return judge.judge_lesson(
            lesson,
            provider=provider,
            job_id=str(run.job_id),
            heartbeat=lambda: _lease_renew(run, worker),
            batch=batch,
        )

    line = services.owner_line(judge_run_id=run.pk)
    if line.waiting:
        return _Round(None, batch=True)
    if line.answered is None and services.judge_by_batch(job=run.job):
        request = ask(services.ASK_FIRST).result.batch_request
        assert request is not None  # ASK_FIRST stops at the first call
        services.owner_request_queue(task_id=run.task_id, judge_run_id=run.pk, request=request)
        return _Round(None, batch=True)
    answered = line.answered
    outcome = ask(services.owner_replay(answered) if answered is not None else None)
    line_id = answered.pk if answered is not None else None
    recorded = _record_round(run, worker, outcome, number=number, line_id=line_id)
    result = outcome.result
    if not recorded:
        return _Round(None, lease_lost=True, error="lease lost")
    if outcome.verdict is None:
        return _Round(None, defer_s=result.defer_s, error=result.error or "no verdict")
    return _Round(outcome.verdict)


@transaction.atomic
def _record_round(
    run: JudgeRun,
    worker: str,
    outcome: judge.JudgeOutcome,
    *,
    number: int,
    line_id: int | None = None,
) -> bool:
    """The round's calls in the ledger (paid for, so kept whatever happens), its cost on the run
    and the job, and the verdict as an evaluation of the lesson. False if the lease was lost.
    A Batch API line's answer (`line_id`) is taken here, once: a run that lost its lease, or
    finds the line taken, records only the live calls it made itself."""
    result, taken = outcome.result, True
    if line_id is not None:
        owned = _owned(run, worker).select_for_update().exists()  # held till the commit
        taken = owned and services.owner_line_take(request_id=line_id)
        if not taken:
            result.attempts = [a for a in result.attempts if not a.batch]
            outcome.verdict = None
    run.refresh_from_db(fields=["attempts"])
    services.judge_attempts_record(judge_run=run, result=result)
    cost = result.cost_usd
    CourseGenerationJob.objects.filter(pk=run.job_id).update(
        judge_cost_usd=F("judge_cost_usd") + cost
    )
    changes: dict[str, Any] = {
        "attempts": F("attempts") + len(result.attempts),
        "input_tokens": F("input_tokens") + result.total("input_tokens"),
        "cached_tokens": F("cached_tokens") + result.total("cached_tokens"),
        "output_tokens": F("output_tokens") + result.total("output_tokens"),
        "cost_usd": F("cost_usd") + cost,
    }
    if outcome.verdict is not None:
        changes |= {"rounds": number, "model": outcome.model}
    if not _owned(run, worker).update(**changes):
        logger.warning("judge run %s: lease lost by %s, verdict discarded", run.pk, worker)
        return False
    if outcome.verdict is not None:
        run.rounds = number
        _evaluation_create(run, outcome, number=number, cost=cost)
    return taken


def _evaluation_create(
    run: JudgeRun, outcome: judge.JudgeOutcome, *, number: int, cost: Decimal
) -> CourseEvaluation:
    verdict = outcome.verdict
    assert verdict is not None
    limits = thresholds.Thresholds.from_settings()
    return CourseEvaluation.objects.create(
        job_id=run.job_id,
        task_id=run.task_id,
        evaluator=JUDGE_EVALUATOR,
        overall=verdict.overall,
        criteria=verdict.normalised(),
        feedback=thresholds.reasons(verdict, limits) or [verdict.improvement],
        details={
            "lesson": run.lesson_key,
            "run": run.pk,
            "round": number,
            "model": outcome.model,
            "prompt_version": prompt.JUDGE_PROMPT_VERSION,
            "simulated": outcome.simulated,
            "cost_usd": str(cost),
            "below_threshold": limits.below(verdict),
            "verdict": verdict.model_dump(mode="json"),
        },
    )


def _latest_verdict(run: JudgeRun) -> LessonVerdict:
    evaluation = (
        CourseEvaluation.objects.filter(
            job_id=run.job_id, task_id=run.task_id, evaluator=JUDGE_EVALUATOR
        )
        .filter(details__run=run.pk)
        .latest("created_at")
    )
    return LessonVerdict.model_validate(evaluation.details["verdict"])


def _regenerate_once(
    run: JudgeRun, verdict: LessonVerdict, provider: Provider
) -> thresholds.Regenerations | None:
    """Regenerate the lesson's tasks the verdict points at, at most once per run: the claim is
    the conditional update of `regenerated`, so a repeated message never asks twice; a resumed
    run carries on with the requests it made. None when there is nothing to regenerate."""
    limits = thresholds.Thresholds.from_settings()
    if not run.regenerated:
        if not settings.COURSEGEN_JUDGE_REGENERATE:
            return None
        kinds = [t.kind for t in thresholds.regeneration_targets(verdict, limits, run=run)]
        if not kinds or not JudgeRun.objects.filter(pk=run.pk, regenerated=[]).update(
            regenerated=kinds
        ):
            return None
        run.regenerated = kinds
    instruction = thresholds.instruction(verdict, limits)
    outcome = thresholds.regenerations_advance(run=run, instruction=instruction, provider=provider)
    if outcome.waiting_s is None:
        log_event(
            "judge.regenerated",
            f"lesson {run.lesson_key} below the judge's thresholds: regenerated "
            f"{', '.join(outcome.succeeded) or 'nothing (the regenerations failed)'}",
            level="warning",
            job=run.job,
            data={"run": run.pk, "kinds": outcome.succeeded, "instruction": instruction},
        )
    return outcome


def _wait_for_batch(run: JudgeRun, worker: str) -> float | None:
    """Give the run back while its line (or its regeneration's) waits for a batch: no message
    is due; the poller wakes it when the line is answered (the reconciler leaves it alone)."""
    _owned(run, worker).update(
        status=JudgeRunStatus.PENDING, worker="", lease_expires_at=None, dispatched_at=Now()
    )
    return None


def _wait(run: JudgeRun, worker: str, delay_s: float) -> float:
    """Give the run back until its regenerations finish (it resumes from its recorded round)."""
    _owned(run, worker).update(
        status=JudgeRunStatus.PENDING,
        worker="",
        lease_expires_at=None,
        dispatched_at=db_now_plus(delay_s),
    )
    return delay_s


def _end_without_verdict(run: JudgeRun, worker: str, outcome: _Round) -> float | None:
    if outcome.lease_lost:
        return None
    if outcome.defer_s is not None and _within_defer_budget(run):
        return _defer(run, worker, outcome)
    _finish(run, worker, status=JudgeRunStatus.FAILED, error=outcome.error)
    log_event(
        "judge.failed",
        f"the judge gave no verdict on lesson {run.lesson_key}: {outcome.error}",
        level="warning",
        job=run.job,
        data={"run": run.pk},
    )
    job_judge_close(job_id=run.job_id)
    return None


def _within_defer_budget(run: JudgeRun) -> bool:
    """Like a task, a run waits out an unavailable provider for COURSEGEN_TASK_DEFER_BUDGET_S
    from its first deferral, then fails."""
    since = JudgeRun.objects.values_list("deferred_since", flat=True).get(pk=run.pk)
    budget = timedelta(seconds=settings.COURSEGEN_TASK_DEFER_BUDGET_S)
    return since is None or db_now() - since < budget


def _defer(run: JudgeRun, worker: str, outcome: _Round) -> float:
    delay = min(max(outcome.defer_s or 0.0, 0.5), settings.COURSEGEN_TASK_DEFER_MAX_S)
    _owned(run, worker).update(
        status=JudgeRunStatus.PENDING,
        worker="",
        lease_expires_at=None,
        error=outcome.error,
        deferrals=F("deferrals") + 1,
        deferred_since=Coalesce(F("deferred_since"), Now()),
        dispatched_at=db_now_plus(delay),
    )
    return delay


def _finish(
    run: JudgeRun,
    worker: str,
    *,
    status: JudgeRunStatus,
    error: str = "",
    score: float | None = None,
    below: bool | None = None,
) -> None:
    _owned(run, worker).update(
        status=status,
        error=error,
        score=score,
        below_threshold=below,
        lease_expires_at=None,
        finished_at=Now(),
    )


# --- The course -----------------------------------------------------------------------------------
def job_judge_close(*, job_id: UUID) -> CourseEvaluation | None:
    """Once every run has ended: the course's evaluation from its lessons' final verdicts,
    written once (the job's judge_status moves from running to done under its row lock)."""
    with transaction.atomic():
        job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
        runs = list(job.judge_runs.all())
        if job.judge_status != JudgeStatus.RUNNING or any(
            r.status not in RUN_TERMINAL for r in runs
        ):
            return None
        record = _course_evaluation(job, runs)
        job.judge_status = JudgeStatus.DONE
        job.judge_score = record.overall if record else None
        job.save(update_fields=["judge_status", "judge_score", "updated_at"])
    log_event(
        "judge.done",
        f"job {job_id} judged: {job.judge_score if job.judge_score is not None else 'no score'}",
        job=job,
        data={"judge_cost_usd": job.judge_cost_usd, "lessons": len(runs)},
    )
    return record


def _course_evaluation(job: CourseGenerationJob, runs: list[JudgeRun]) -> CourseEvaluation | None:
    finals = {}
    for evaluation in CourseEvaluation.objects.filter(
        job=job, evaluator=JUDGE_EVALUATOR, task__isnull=False
    ).order_by("created_at"):
        finals[evaluation.details.get("lesson")] = evaluation  # the latest round wins
    judged = [finals[r.lesson_key] for r in runs if r.lesson_key in finals]
    if not judged:
        return None
    names = list(judged[0].criteria)
    criteria = {n: round(sum(e.criteria[n] for e in judged) / len(judged), 4) for n in names}
    below = [r for r in runs if r.below_threshold]
    return CourseEvaluation.objects.create(
        job=job,
        evaluator=JUDGE_EVALUATOR,
        overall=round(sum(e.overall for e in judged) / len(judged), 4),
        criteria=criteria,
        feedback=[
            f"lesson {r.lesson_key}: {'; '.join(finals[r.lesson_key].feedback)}" for r in below
        ]
        + [f"lesson {r.lesson_key}: not judged ({r.error})" for r in runs if r.score is None],
        details={
            "lessons": len(runs),
            "judged": len(judged),
            "below_threshold": [r.lesson_key for r in below],
            "regenerated": {r.lesson_key: r.regenerated for r in runs if r.regenerated},
            "simulated": any(e.details.get("simulated") for e in judged),
            "prompt_version": prompt.JUDGE_PROMPT_VERSION,
            "cost_usd": str(sum((r.cost_usd for r in runs), Decimal(0))),
        },
    )


# --- Recovery -------------------------------------------------------------------------------------
def _waiting_for_batch() -> Q:
    """Pending runs whose line, or whose lesson's regeneration's line, is queued or at the
    provider: the poller wakes them (docs/batch.md); an answered line is theirs to take."""
    regeneration_line = BatchRequest.objects.filter(
        regeneration__source=RegenerationSource.JUDGE,
        regeneration__task__job_id=OuterRef("job_id"),
        regeneration__task__key=OuterRef("lesson_key"),
        status__in=services.owner_waiting_statuses(),
    )
    return Q(status=JudgeRunStatus.PENDING) & (
        services.owner_waiting_for_batch() | Q(Exists(regeneration_line))
    )


def judge_recover(*, now: datetime, stale: datetime) -> int:
    """For the reconciler: re-send runs whose message was lost (pending and overdue, or running
    with an expired lease), start courses whose judge_job message was lost, close courses whose
    last run ended without closing. Returns how many messages it sent or closes it made."""
    lost = Q(status=JudgeRunStatus.PENDING) & (
        Q(dispatched_at__lt=stale) | Q(dispatched_at__isnull=True)
    ) | Q(status=JudgeRunStatus.RUNNING, lease_expires_at__lt=now)
    with transaction.atomic():
        run_ids = list(
            JudgeRun.objects.filter(lost)
            .exclude(_waiting_for_batch())
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)[:500]
        )
        JudgeRun.objects.filter(pk__in=run_ids).update(dispatched_at=now)
        transaction.on_commit(lambda: send_runs(run_ids))
    waiting = list(
        CourseGenerationJob.objects.filter(
            judge_status=JudgeStatus.PENDING, finished_at__lt=stale
        ).values_list("pk", flat=True)[:500]
    )
    for job_id in waiting:
        job_judge_start(job_id=job_id)
    unclosed = (
        CourseGenerationJob.objects.filter(judge_status=JudgeStatus.RUNNING, finished_at__lt=stale)
        .exclude(judge_runs__status__in=[JudgeRunStatus.PENDING, JudgeRunStatus.RUNNING])
        .values_list("pk", flat=True)[:500]
    )
    closed = sum(1 for job_id in unclosed if job_judge_close(job_id=job_id))
    return len(run_ids) + len(waiting) + closed
