"""Admission and queueing of a course request: the job, its outline task and its queue entry."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from accounts.models import BaseClass, Role
from coursegen import db
from generation import hotpath, idempotency
from generation.models import (
    AttemptKind,
    AttemptOutcome,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    IdempotencyKey,
    Priority,
    QueueEntry,
    Urgency,
)
from generation.prompts import PROMPT_VERSIONS
from generation.providers import ModerationResult
from generation.schemas import TASK_TIERS, CourseRequest, TaskKind
from generation.services import common, dispatch
from monitoring.correlation import set_correlation_id
from monitoring.logs import log_event
from ratelimits.selectors import NotAMemberError
from ratelimits.services import admission_check_and_record

ROLE_PRIORITY = {
    Role.ADMIN: Priority.HIGH,
    Role.TEACHER: Priority.NORMAL,
    Role.STUDENT: Priority.LOW,
}


@transaction.atomic
def job_submit(
    *,
    user: User,
    base_class: BaseClass,
    request: CourseRequest,
    idempotency_key: IdempotencyKey | None = None,
    moderation: ModerationResult | None = None,
    urgency: str = Urgency.NOW,
) -> CourseGenerationJob:
    """Admit and queue a course request. The job returned holds its rows as inserted: its queue
    entry and its tasks (the outline), like a prefetch; `refresh_from_db()` reads them anew.
    `moderation` is the request's verdict (generation/safety.py), made before admission: it
    goes in the ledger as the outline task's first attempt. `urgency` "batch" sends the job's
    calls through the Batch API (docs/batch.md), if the caller's role may
    (COURSEGEN_BATCH_ROLES)."""
    try:
        # The role is the user's in the class's organisation, read with the usage. Raises
        # RateLimitExceeded (and this transaction rolls back) when over a limit.
        # The job weighs its planned tasks against the role's task budgets, and its estimated
        # cost against the organisation's monthly budget (BudgetExceeded).
        admitted = admission_check_and_record(
            user=user,
            organisation_id=base_class.organisation_id,
            units=request.task_count,
            batch=urgency == Urgency.BATCH,
        )
    except NotAMemberError as exc:
        raise common.GenerationError("you are not a member of this class's organisation") from exc
    urgency_check(role=admitted.role, urgency=urgency)
    priority = ROLE_PRIORITY[admitted.role]
    job = CourseGenerationJob(
        owner=user,
        organisation_id=base_class.organisation_id,
        base_class=base_class,
        request=request.model_dump(mode="json"),
        priority=priority,
        urgency=urgency,
    )
    outline = _task_new(job=job, kind=TaskKind.OUTLINE, key="course", position=0)
    outline.attempts = 1 if moderation is not None else 0
    entry = QueueEntry(job=job, priority=priority)
    rows: list[CourseGenerationJob | GenerationTask | QueueEntry | GenerationAttempt]
    rows = [job, outline, entry]
    if moderation is not None:
        rows.append(
            GenerationAttempt(
                task=outline,
                number=1,
                kind=AttemptKind.MODERATION,
                outcome=AttemptOutcome.OK,
                model=moderation.model,
                latency_ms=round(moderation.latency_s * 1000),
            )
        )
    if db.hand_written_sql():  # one round trip for the rows
        hotpath.insert_together(*rows)
    else:
        for row in rows:  # save() takes the attempt's task key from the task saved before it
            row.save(force_insert=True)
    _tasks_in_hand(job, [outline])
    if idempotency_key is not None:  # linked in the same transaction: a replay finds this job
        idempotency.idempotency_key_link(record=idempotency_key, job_id=job.pk)
    set_correlation_id(job.correlation_id)  # the rest of this request, and its tasks, is the job's
    log_event(
        "job.submitted",
        f"job {job.id} submitted by {user.pk}: {request.topic}",
        job=job,
        user=user,
        data={"topic": request.topic, "priority": priority, "urgency": urgency},
    )
    transaction.on_commit(dispatch.send_dispatch)
    return job


def urgency_check(*, role: str, urgency: str) -> None:
    """Refuse an urgency the role may not use (raising rolls the admission back)."""
    if urgency not in Urgency.values:
        raise common.GenerationError(f"urgency must be one of {', '.join(Urgency.values)}")
    if urgency == Urgency.BATCH and role not in settings.COURSEGEN_BATCH_ROLES:
        allowed = ", ".join(settings.COURSEGEN_BATCH_ROLES) or "no role"
        raise common.UrgencyNotAllowedError(
            f'"urgency": "batch" is not allowed for a {role}; it is for: {allowed}'
        )


def _tasks_in_hand(job: CourseGenerationJob, tasks: list[GenerationTask]) -> None:
    """Let `job.tasks.all()` return `tasks` without a query, as prefetch_related would: a new
    job's tasks are the ones just inserted, and the submit response lists them."""
    in_hand = job.tasks.all()  # lazy: filtered to the job, not run
    in_hand._result_cache = tasks
    in_hand._prefetch_done = True  # type: ignore[attr-defined]  # Django's own prefetch state
    job._prefetched_objects_cache = {"tasks": in_hand}  # type: ignore[attr-defined]  # ditto


def _task_new(
    *, job: CourseGenerationJob, kind: TaskKind, key: str, position: int
) -> GenerationTask:
    tier = TASK_TIERS[kind]
    return GenerationTask(
        job=job,
        kind=kind,
        key=key,
        position=position,
        tier=tier,
        model=common.model_for(tier),
        prompt_version=PROMPT_VERSIONS[kind],
    )
