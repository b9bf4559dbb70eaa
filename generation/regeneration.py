"""Regenerating one task of a finished course (or one part of its output), on request,
optionally with a teacher's instruction appended to the task-specific part of the prompt.

A regeneration is a request row (`RegenerationRequest`) whose id the message carries. Its run
claims the row with a lease and a run number, as a task's run claims the task, so:

* a message delivered twice runs the request once (the second finds it claimed or finished);
* a worker killed mid-run leaves the request running with a lease that runs out, and the
  reconciler sends it again; a resumed run skips what its predecessor recorded;
* the task itself stays succeeded throughout: its output stands until the new one replaces it;
* one regeneration of a course runs at a time (its claim holds the job's row lock), so the
  question de-duplication pass and the re-assembly after it never race another one.

The output it had is kept as a `GenerationTaskVersion` (so is the new one: the latest version is
always the current output). The attempts ledger and the job's totals are kept, questions are
de-duplicated across the course again (`services.job_dedupe_questions`) and the course
re-assembles. Callers besides the API and the admin (an LLM judge, say) create requests with
their own `source` through `regeneration_request_create`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q, QuerySet
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from generation import assembly, messages, parts, services
from generation.field_errors import FieldError, public_error
from generation.leases import db_now_plus
from generation.llm import BatchReplay, GenerationResult, generate, regenerate_part
from generation.models import (
    CourseGenerationJob,
    GenerationTask,
    GenerationTaskVersion,
    JobStatus,
    JudgeRun,
    JudgeRunStatus,
    RegenerationRequest,
    RegenerationSource,
    RegenerationStatus,
    TaskStatus,
)
from generation.providers import Provider, get_provider
from generation.schemas import OUTPUT_SCHEMAS, TaskKind
from generation.services import GenerationError, LeaseClock, while_lease_holds
from monitoring.logs import log_event
from ratelimits.models import AdmissionKind
from ratelimits.selectors import NotAMemberError
from ratelimits.services import work_admit

logger = logging.getLogger("coursegen.generation")

BUSY_RETRY_S = 5.0  # another regeneration of the same course is running: try again after this
# Regenerations people ask for pass admission; the quality loop's are bounded per job instead.
ADMITTED_SOURCES = (RegenerationSource.API, RegenerationSource.ADMIN)
# A part request's "problem": the teacher's own words reach the model only in the task text,
# quoted as data (prompts.INSTRUCTION_TEMPLATE), never as a validation error.
_PART_ASK = "asked for a new version (see the teacher's request above, if any)"


def _admit(*, by: User, organisation_id: UUID) -> None:
    try:
        work_admit(
            user=by, organisation_id=organisation_id, kind=AdmissionKind.REGENERATION, units=1
        )
    except NotAMemberError as exc:
        raise GenerationError("you are not a member of this course's organisation") from exc


def _regenerable_problem(task: GenerationTask) -> str:
    if task.kind == TaskKind.OUTLINE:
        return "the outline cannot be regenerated on its own: every other task is built on it"
    if task.job.status != JobStatus.SUCCEEDED:
        return f"only tasks of a finished course can be regenerated; the job is {task.job.status}"
    if task.status != TaskStatus.SUCCEEDED:
        return f"the task has {task.status}"
    return ""


# --- Asking -------------------------------------------------------------------------------------
def regeneration_request_create(
    *,
    task_id: int,
    by: User | None,
    source: str,
    instruction: str = "",
    part: str = "",
    send: bool = True,
) -> RegenerationRequest:
    """Check that the task can be regenerated now, admit it (a person's request: the
    regeneration and task limits of their role), record the request and send it after commit
    (unless the caller runs it itself). GenerationError (safe to show) when it cannot, or when
    one is open already; RateLimitExceeded or RequestTooLarge when admission refuses."""
    with transaction.atomic():
        task = GenerationTask.objects.select_related("job").get(pk=task_id)
        problem = _regenerable_problem(task)
        schema = OUTPUT_SCHEMAS[task.task_kind]
        if not problem and part and part not in parts.parts_of(schema, task.output or {}):
            problem = f"{task.kind} has no part {part!r}"
        if problem:
            raise GenerationError(problem)
        if by is not None and source in ADMITTED_SOURCES:
            _admit(by=by, organisation_id=task.job.organisation_id)
        try:
            with transaction.atomic():  # a savepoint: the unique constraint may refuse
                request = RegenerationRequest.objects.create(
                    task=task,
                    source=source,
                    part=part,
                    instruction=instruction,
                    requested_by=by,
                    dispatched_at=Now(),
                )
        except IntegrityError:
            raise GenerationError("this task is being regenerated already") from None
        priority = task.job.priority
        if send:
            transaction.on_commit(
                lambda: regeneration_send(request_id=request.pk, priority=priority)
            )
    return request


def task_regenerate_enqueue(
    *,
    task_id: int,
    instruction: str = "",
    by: User,
    source: str = RegenerationSource.API,
) -> GenerationTask:
    """The API's and the admin's way in: a request for the whole task. Returns the task."""
    request = regeneration_request_create(
        task_id=task_id, by=by, source=source, instruction=instruction
    )
    return request.task


def task_regenerate(
    *, task_id: int, instruction: str = "", by: User, provider: Provider | None = None
) -> GenerationTask:
    """Regenerate a task in this process, now (a command, a test); returns the task."""
    request = regeneration_request_create(
        task_id=task_id, by=by, source=RegenerationSource.API, instruction=instruction, send=False
    )
    regeneration_run(request_id=request.pk, provider=provider)
    return GenerationTask.objects.get(pk=task_id)


def regeneration_send(*, request_id: int, priority: int) -> None:
    messages.task(messages.REGENERATE_TASK).apply_async(
        args=(request_id,), priority=messages.broker_priority(priority)
    )


# --- Running ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegenerationRun:
    request_id: int
    status: str
    ran: bool  # False when the message was a repeat (or the request cannot run any more)
    retry_in: float | None = None  # set when it must wait: send it again after this
    batch: bool = False  # waiting for a Batch API line: the poller wakes it (docs/batch.md)


def regeneration_run(*, request_id: int, provider: Provider | None = None) -> RegenerationRun:
    """Run (or resume) one regeneration request. Safe to repeat."""
    worker = f"regenerate:{services.worker_name()}"
    claim = _regeneration_claim(request_id=request_id, worker=worker)
    if isinstance(claim, float):
        return RegenerationRun(request_id, RegenerationStatus.PENDING, ran=False, retry_in=claim)
    if claim is None:
        found = RegenerationRequest.objects.filter(pk=request_id).values_list("status", flat=True)
        return RegenerationRun(request_id, str(found.first()), ran=False)
    request, lease = claim, LeaseClock(settings.COURSEGEN_TASK_LEASE_S)

    def holds() -> bool:
        return lease.renewed(bool(_owned(request, worker).update(lease_expires_at=_lease())))

    if request.version is None and not request.error:  # not recorded by an earlier run
        if _regeneration_to_batch(request=request, worker=worker, provider=provider, holds=holds):
            return RegenerationRun(request_id, RegenerationStatus.PENDING, ran=True, batch=True)
        delay = _regeneration_generate(
            request=request, worker=worker, provider=provider, holds=holds, lease=lease
        )
        if delay is not None:
            return RegenerationRun(request_id, RegenerationStatus.PENDING, ran=True, retry_in=delay)
        request.refresh_from_db(fields=["version", "error"])
    job_id = request.task.job_id
    if request.version is not None:
        services.job_dedupe_questions(job_id=job_id, provider=provider, finished=True, holds=holds)
    status = while_lease_holds(lease, lambda: _regeneration_close(request=request, worker=worker))
    if request.source == RegenerationSource.JUDGE:
        _judge_wake(request.task)
    return RegenerationRun(request_id, status, ran=True)


def _judge_wake(task: GenerationTask) -> None:
    """A judge run given back while this regeneration waited for a batch goes on now (the
    reconciler would send it later, if this message were lost)."""
    waiting = JudgeRun.objects.filter(
        job_id=task.job_id, lesson_key=task.key, status=JudgeRunStatus.PENDING
    ).values_list("pk", flat=True)
    run_ids = list(waiting)
    if run_ids:
        transaction.on_commit(lambda: _judge_send(run_ids))


def _judge_send(run_ids: list[int]) -> None:
    judge_lesson = messages.task(messages.JUDGE_LESSON)
    for run_id in run_ids:
        judge_lesson.apply_async(args=(run_id,), priority=messages.judge_priority())


def _lease() -> Any:
    return db_now_plus(settings.COURSEGEN_TASK_LEASE_S)


def _owned(request: RegenerationRequest, worker: str) -> QuerySet[RegenerationRequest]:
    return RegenerationRequest.objects.filter(
        pk=request.pk, status=RegenerationStatus.RUNNING, worker=worker, runs=request.runs
    )


@transaction.atomic
def _regeneration_claim(*, request_id: int, worker: str) -> RegenerationRequest | float | None:
    """Claim the request: the request, a wait (another regeneration of the course is running),
    or None (finished, claimed elsewhere, or the task can no longer be regenerated)."""
    request = RegenerationRequest.objects.select_related("task__job").filter(pk=request_id).first()
    if request is None or request.status not in (
        RegenerationStatus.PENDING,
        RegenerationStatus.RUNNING,
    ):
        return None
    job_id = request.task.job_id
    CourseGenerationJob.objects.select_for_update().filter(pk=job_id).values_list("pk").first()
    busy = RegenerationRequest.objects.filter(
        task__job_id=job_id, status=RegenerationStatus.RUNNING, lease_expires_at__gte=Now()
    ).exclude(pk=request.pk)
    if busy.exists():
        RegenerationRequest.objects.filter(pk=request.pk, status=RegenerationStatus.PENDING).update(
            dispatched_at=db_now_plus(BUSY_RETRY_S)
        )
        return BUSY_RETRY_S
    problem = _regenerable_problem(request.task)
    if problem and request.version is None:
        RegenerationRequest.objects.filter(pk=request.pk).update(
            status=RegenerationStatus.FAILED,
            error=problem,
            finished_at=Now(),
            lease_expires_at=None,
        )
        return None
    claimable = Q(status=RegenerationStatus.PENDING) | Q(
        status=RegenerationStatus.RUNNING, lease_expires_at__lt=Now()
    )
    claimed = RegenerationRequest.objects.filter(claimable, pk=request.pk).update(
        status=RegenerationStatus.RUNNING,
        worker=worker,
        runs=F("runs") + 1,
        lease_expires_at=_lease(),
        started_at=Coalesce(F("started_at"), Now()),
        redispatches=0,
    )
    if not claimed:
        return None
    request.refresh_from_db()
    _first_version_keep(request.task)
    return request


def _first_version_keep(task: GenerationTask) -> None:
    """Before its first regeneration, a task's output becomes its version 1."""
    if task.versions.exists():
        return
    _version_create(
        task=task,
        number=1,
        output=task.output or {},
        usage=(task.input_tokens, task.cached_tokens, task.output_tokens),
        cost=task.cost_usd,
        instruction="",
        by=task.job.owner,
        at=task.finished_at or timezone.now(),
    )


def _regeneration_call(
    *,
    request: RegenerationRequest,
    worker: str,
    provider: Provider | None,
    holds: Any,
    batch: BatchReplay | None = None,
) -> GenerationResult:
    task = request.task
    spec = services.task_spec_build(task=task, worker=worker, heartbeat=holds)
    # The new version number makes the offline simulator draw anew; real providers ignore it.
    number = (task.versions.aggregate(n=Max("number"))["n"] or 1) + 1
    spec = dataclasses.replace(
        spec, instruction=request.instruction, context={**spec.context, "variant": number}
    )
    if request.part:
        return regenerate_part(
            spec,
            provider or get_provider(),
            data=task.output or {},
            part=request.part,
            errors=[FieldError(request.part, _PART_ASK)],
            batch=batch,
        )
    return generate(spec, provider or get_provider(), batch=batch)


def _regeneration_to_batch(
    *, request: RegenerationRequest, worker: str, provider: Provider | None, holds: Any
) -> bool:
    """True when the request waits for a Batch API line (COURSEGEN_BATCH_REGENERATIONS): its
    line queued now (the request its first call would send), or queued earlier and not yet
    answered. The request is given back (pending) until the poller wakes it."""
    line = services.owner_line(regeneration_id=request.pk)
    if line.answered is not None:
        return False
    if not line.waiting:
        if not services.regeneration_by_batch(request=request):
            return False
        asked = _regeneration_call(
            request=request, worker=worker, provider=provider, holds=holds, batch=services.ASK_FIRST
        )
        if asked.batch_request is None:  # it could not even be asked (a bug): run it live
            return False
        services.owner_request_queue(
            task_id=request.task_id, regeneration_id=request.pk, request=asked.batch_request
        )
    _owned(request, worker).update(
        status=RegenerationStatus.PENDING, worker="", lease_expires_at=None, dispatched_at=Now()
    )
    return True


def _regeneration_generate(
    *,
    request: RegenerationRequest,
    worker: str,
    provider: Provider | None,
    holds: Any,
    lease: LeaseClock,
) -> float | None:
    """Call the provider (or take the Batch API line's answer that woke this run) and record
    the outcome; a delay when the provider is unavailable."""
    task = request.task
    line = services.owner_line(regeneration_id=request.pk).answered
    replay = services.owner_replay(line) if line is not None else None
    line_id = line.pk if line is not None else None
    started = time.monotonic()
    try:
        result = _regeneration_call(
            request=request, worker=worker, provider=provider, holds=holds, batch=replay
        )
    except Exception as exc:  # a bug must not leave the request claimed for ever
        logger.exception("regeneration %s of task %s crashed", request.pk, task.pk)
        result = GenerationResult(error=public_error("internal error", exc))
    wall_s = time.monotonic() - started
    if result.defer_s is not None:
        delay = while_lease_holds(
            lease,
            lambda: _regeneration_defer(
                request=request, worker=worker, result=result, line_id=line_id
            ),
        )
        if delay is not None:
            return delay
    while_lease_holds(
        lease,
        lambda: _regeneration_record(
            request=request, worker=worker, result=result, wall_s=wall_s, line_id=line_id
        ),
    )
    return None


def _line_take(
    *, request: RegenerationRequest, worker: str, result: GenerationResult, line_id: int | None
) -> bool:
    """Take the Batch API line's answer the run used, once, while the run owns the request
    (its row locked till the commit). When it cannot, the line's answer is someone else's to
    record: only the run's own live calls stay in `result`."""
    if line_id is None:
        return True
    owned = _owned(request, worker).select_for_update().exists()
    if owned and services.owner_line_take(request_id=line_id):
        return True
    result.attempts = [a for a in result.attempts if not a.batch]
    return False


@transaction.atomic
def _regeneration_defer(
    *,
    request: RegenerationRequest,
    worker: str,
    result: GenerationResult,
    line_id: int | None = None,
) -> float | None:
    """The provider is unavailable: give the request back (pending) to be sent again later,
    within the deferral budget counted from when it was asked for. None when it is spent (or
    the run lost its lease): nothing is recorded here then, the caller records the result."""
    task = GenerationTask.objects.select_for_update().get(pk=request.task_id)
    if not _line_take(request=request, worker=worker, result=result, line_id=line_id):
        services.task_attempts_record(task=task, result=result)
        services.task_usage_add(task=task, result=result)
        return 0.0  # not this run's to record: the owner of the line goes on
    delay = services.defer_delay(defer_s=result.defer_s, deferrals=request.runs - 1)
    budget = db_now_plus(-settings.COURSEGEN_TASK_DEFER_BUDGET_S)
    deferred = (
        _owned(request, worker)
        .filter(created_at__gt=budget)
        .update(
            status=RegenerationStatus.PENDING,
            worker="",
            lease_expires_at=None,
            dispatched_at=db_now_plus(delay),
        )
    )
    if not deferred:
        result.error = f"deferral budget spent: {result.error}"
        return None
    services.task_attempts_record(task=task, result=result)
    services.task_usage_add(task=task, result=result)
    return delay


@transaction.atomic
def _regeneration_record(
    *,
    request: RegenerationRequest,
    worker: str,
    result: GenerationResult,
    wall_s: float,
    line_id: int | None = None,
) -> None:
    """Record the calls (always: they were paid for), then, while the run still owns the
    request (and takes its Batch API line, if one answered it), the new version and the
    task's new output (or why there is none)."""
    task = GenerationTask.objects.select_for_update().select_related("job").get(pk=request.task_id)
    taken = _line_take(request=request, worker=worker, result=result, line_id=line_id)
    services.task_attempts_record(task=task, result=result)
    services.task_usage_add(task=task, result=result)
    if not taken:
        logger.warning("regeneration %s: its batch line is not %s's to take", request.pk, worker)
        return
    number = (task.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    error = "" if result.ok else f"regeneration failed, the previous version stays: {result.error}"
    if not _owned(request, worker).update(version=number if result.ok else None, error=error):
        logger.warning("regeneration %s: lease lost by %s; nothing recorded", request.pk, worker)
        return
    changes: dict[str, Any] = {"duration_ms": round(wall_s * 1000)}
    if result.ok:
        usage = tuple(result.total(n) for n in ("input_tokens", "cached_tokens", "output_tokens"))
        _version_create(
            task=task,
            number=number,
            output=result.data or {},
            usage=usage,  # type: ignore[arg-type]
            cost=result.cost_usd,
            instruction=request.instruction,
            by=request.requested_by,
        )
        changes |= {
            "output": result.data,  # written with the task's own prompt version (and variant)
            "validation_errors": [],
            "error": "",
            **services.new_version_moderation(task=task, result=result),
        }
    else:
        changes |= {"validation_errors": result.validation_errors, "error": error}
    GenerationTask.objects.filter(pk=task.pk).update(**changes)
    outcome = "regenerated" if result.ok else "regeneration_failed"
    log_event(
        f"task.{outcome}",
        f"{task.kind} {task.key} {outcome.replace('_', ' ')} (version {number}) by "
        f"{request.requested_by or request.source}",
        level="info" if result.ok else "warning",
        job=task.job,
        task=task,
        user=request.requested_by,
        duration_ms=wall_s * 1000,
        data={
            "request": request.pk,
            "source": request.source,
            "part": request.part,
            "instruction": request.instruction,
            "attempts": len(result.attempts),
            "error": result.error,
        },
    )


@transaction.atomic
def _regeneration_close(*, request: RegenerationRequest, worker: str) -> str:
    """Re-assemble the course and close the request, in one transaction."""
    job_reassemble(job_id=request.task.job_id)
    recorded = RegenerationRequest.objects.values_list("version", flat=True).get(pk=request.pk)
    status = RegenerationStatus.SUCCEEDED if recorded is not None else RegenerationStatus.FAILED
    _owned(request, worker).update(status=status, lease_expires_at=None, finished_at=Now())
    return str(status)


def _version_create(
    *,
    task: GenerationTask,
    number: int,
    output: dict[str, Any],
    usage: tuple[int, int, int],
    cost: Any,
    instruction: str,
    by: User | None,
    at: Any = None,
) -> GenerationTaskVersion:
    return GenerationTaskVersion.objects.create(
        task=task,
        number=number,
        output=output,
        model=task.model,
        prompt_version=task.prompt_version,
        instruction=instruction,
        input_tokens=usage[0],
        cached_tokens=usage[1],
        output_tokens=usage[2],
        cost_usd=cost,
        created_by=by,
        created_at=at or timezone.now(),
    )


@transaction.atomic
def job_reassemble(*, job_id: UUID) -> CourseGenerationJob:
    """Re-total a finished job and re-assemble its course from the tasks' current outputs."""
    job = CourseGenerationJob.objects.select_for_update().get(pk=job_id)
    tasks = list(job.tasks.all())
    services.job_totals_apply(job=job, tasks=tasks)
    fields = ["input_tokens", "cached_tokens", "output_tokens", "cost_usd", "reask_cost_usd"]
    if job.status == JobStatus.SUCCEEDED and all(t.status == TaskStatus.SUCCEEDED for t in tasks):
        course = assembly.assemble_course(job=job, tasks=tasks)
        if course != job.course:  # a failed regeneration keeps the course, and its score
            job.course = course
            services.job_evaluate(job=job, tasks=tasks)
            fields += ["course", "quality_score"]
            transaction.on_commit(lambda: services.quality_check(job=job))
    job.save(update_fields=[*fields, "updated_at"])
    return job
