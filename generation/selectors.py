"""Read-side queries for jobs, scoped to what the caller may see.

Teachers and admins see their organisations' jobs; students see their own. Anything else is
invisible, so the API answers 404 rather than 403 and does not reveal that it exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    prefetch_related_objects,
)

from accounts.models import Membership, Role
from accounts.selectors import administered_organisation_ids, is_organisation_admin
from coursegen import db
from generation.batch_models import BATCH_REQUEST_OPEN
from generation.models import (
    MODERATION_WITHHELD,
    BatchRequest,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    ProviderConstraint,
    QueueEntry,
    QueueState,
    TaskStatus,
)
from generation.quality_models import JudgeRun
from generation.queueing import PG_AGED_PRIORITY, aged_priority, queued_in_order


def jobs_visible_to(*, user: User | AnonymousUser) -> QuerySet[CourseGenerationJob]:
    if not user.is_authenticated:
        return CourseGenerationJob.objects.none()
    staff_orgs = Membership.objects.filter(user=user, role__in=[Role.TEACHER, Role.ADMIN]).values(
        "organisation_id"
    )
    member_orgs = Membership.objects.filter(user=user).values("organisation_id")
    return CourseGenerationJob.objects.filter(
        Q(organisation_id__in=staff_orgs) | Q(owner=user, organisation_id__in=member_orgs)
    ).select_related("owner", "base_class", "organisation")


def job_get_visible(*, user: User | AnonymousUser, job_id: UUID) -> CourseGenerationJob | None:
    return jobs_visible_to(user=user).filter(pk=job_id).first()


def course_job_visible(*, user: User | AnonymousUser, job_id: UUID) -> CourseGenerationJob | None:
    """The job for its course page and its exports: whoever may see it through the API, and
    staff who may view jobs in the admin (where they see its course already)."""
    if (
        user.is_authenticated
        and user.is_staff
        and user.has_perm("generation.view_coursegenerationjob")
    ):
        jobs = CourseGenerationJob.objects.select_related("owner", "base_class", "organisation")
        if is_organisation_admin(user):  # staff scoped to their organisations (docs/admin.md)
            jobs = jobs.filter(organisation_id__in=administered_organisation_ids(user))
        found = jobs.filter(pk=job_id).first()
        if found is not None:
            return found
    # Also for an organisation administrator's jobs as a member elsewhere, which the API lists.
    return job_get_visible(user=user, job_id=job_id)


def withheld_lesson_keys(*, job_id: UUID) -> frozenset[str]:
    """The keys of the job's lessons with a part that moderation holds or staff rejected."""
    held = GenerationTask.objects.filter(job_id=job_id, moderation__in=MODERATION_WITHHELD)
    return frozenset(held.values_list("key", flat=True))


def latest_course_job() -> CourseGenerationJob | None:
    """The newest succeeded job with a course (`export_course --latest`)."""
    jobs = CourseGenerationJob.objects.select_related("organisation", "base_class")
    finished = jobs.filter(status=JobStatus.SUCCEEDED, course__isnull=False)
    return finished.order_by("-finished_at", "-created_at").first()


def job_status_visible(
    *, user: User | AnonymousUser, job_id: UUID, task_fields: Sequence[str]
) -> CourseGenerationJob | None:
    """The job for its status page, polled often. Simple queries (compiling the visibility
    subqueries was the largest part of a poll), and the big JSON documents (the course, the
    outline, the tasks' outputs) stay in the database."""
    jobs = CourseGenerationJob.objects.select_related("owner").defer("course", "outline")
    job = _one_visible(user=user, job_id=job_id, jobs=jobs)
    if job is not None:
        only = GenerationTask.objects.only("job_id", *task_fields)  # parsing the rest was most
        prefetch_related_objects([job], Prefetch("tasks", only))
    return job


PROGRESS_FIELDS = (
    "id", "status", "progress", "priority", "error", "created_at", "started_at", "finished_at",
    "owner_id", "organisation_id",
)  # fmt: skip
_PROGRESS_SQL = """
SELECT {columns}, j.course IS NOT NULL AS has_course,
    (SELECT m.role FROM memberships m
     WHERE m.user_id = %(user)s AND m.organisation_id = j.organisation_id) AS caller_role
FROM course_generation_jobs j
WHERE j.id = %(job)s
""".format(columns=", ".join(f"j.{name}" for name in PROGRESS_FIELDS))


def job_progress_visible(*, user: User | AnonymousUser, job_id: UUID) -> CourseGenerationJob | None:
    """The job's progress columns only: what a waiting client polls every few seconds."""
    if not user.is_authenticated:
        return None
    if not db.hand_written_sql():
        jobs = CourseGenerationJob.objects.only(*PROGRESS_FIELDS)
        return _one_visible(user=user, job_id=job_id, jobs=jobs)
    # Most API requests are this poll: the row and the caller's role in its organisation in one
    # statement that needs no compiling (two compiled ORM queries were most of a poll's time).
    params = {"job": job_id, "user": user.pk}
    job = next(iter(CourseGenerationJob.objects.raw(_PROGRESS_SQL, params)), None)
    role: str | None = None if job is None else job.caller_role  # type: ignore[attr-defined]
    if job is None or not _role_may_see(role, user=user, job=job):
        return None
    return job


def _one_visible(
    *, user: User | AnonymousUser, job_id: UUID, jobs: QuerySet[CourseGenerationJob]
) -> CourseGenerationJob | None:
    """One job, annotated with has_course, if `user` may see it (jobs_visible_to for one row)."""
    if not user.is_authenticated:
        return None
    has_course = ExpressionWrapper(Q(course__isnull=False), output_field=BooleanField())
    job = jobs.filter(pk=job_id).annotate(has_course=has_course).first()
    if job is None or not _may_see(user=user, job=job):
        return None
    return job


def _may_see(*, user: User, job: CourseGenerationJob) -> bool:
    """jobs_visible_to for one job: the organisation's teachers and admins, or its member owner."""
    role = (
        Membership.objects.filter(user=user, organisation_id=job.organisation_id)
        .values_list("role", flat=True)
        .first()
    )
    return _role_may_see(role, user=user, job=job)


def _role_may_see(role: str | None, *, user: User, job: CourseGenerationJob) -> bool:
    """`role`: the user's in the job's organisation, None for no membership."""
    return role in (Role.TEACHER, Role.ADMIN) or (role is not None and job.owner_id == user.pk)


def queue_position(*, job: CourseGenerationJob) -> int | None:
    """1 for the next job to start; None when the job is not waiting."""
    if job.status != JobStatus.QUEUED:  # known from the row already: no query
        return None
    if db.hand_written_sql():
        return _queue_position_postgresql(job_id=job.pk)
    entry = QueueEntry.objects.filter(job=job).first()
    if entry is None or entry.state != QueueState.QUEUED:
        return None
    mine = aged_priority(entry)
    ahead = queued_in_order(QueueEntry.objects.filter(state=QueueState.QUEUED)).filter(
        Q(effective_priority__lt=mine)
        | Q(effective_priority=mine, enqueued_at__lt=entry.enqueued_at)
    )
    return ahead.count() + 1


# The ORM version above in one statement without compiling: every submit and every poll of a
# waiting job asks. Same order: effective priority, then the longest waiting.
_QUEUE_POSITION_SQL = """
SELECT (SELECT count(*) FROM course_generation_queue q
        WHERE q.state = %(queued)s
          AND ({q_aged} < {e_aged} OR ({q_aged} = {e_aged} AND q.enqueued_at < e.enqueued_at))
       ) + 1
FROM course_generation_queue e
WHERE e.job_id = %(job)s AND e.state = %(queued)s
""".format(
    q_aged=PG_AGED_PRIORITY.format(
        priority="q.priority", enqueued_at="q.enqueued_at", aging_s="%(aging_s)s"
    ),
    e_aged=PG_AGED_PRIORITY.format(
        priority="e.priority", enqueued_at="e.enqueued_at", aging_s="%(aging_s)s"
    ),
)


def _queue_position_postgresql(*, job_id: UUID) -> int | None:
    params: dict[str, Any] = {
        "job": job_id,
        "queued": QueueState.QUEUED.value,
        "aging_s": float(settings.COURSEGEN_QUEUE_AGING_S),
    }
    with connection.cursor() as cursor:
        cursor.execute(_QUEUE_POSITION_SQL, params)
        row = cursor.fetchone()
    return None if row is None else int(row[0])


# Every followed job's progress columns and queue position in one statement (the events hub,
# generation/events.py): rank() over the queue is _QUEUE_POSITION_SQL's count + 1 for each row.
_JOBS_PROGRESS_SQL = """
SELECT {columns}, j.course IS NOT NULL AS has_course,
    CASE WHEN j.status = %(queued_job)s THEN q.position END AS known_queue_position
FROM course_generation_jobs j
LEFT JOIN (
    SELECT e.job_id, rank() OVER (ORDER BY {e_aged}, e.enqueued_at) AS position
    FROM course_generation_queue e
    WHERE e.state = %(queued)s
) q ON q.job_id = j.id
WHERE j.id = ANY(%(jobs)s)
""".format(
    columns=", ".join(f"j.{name}" for name in PROGRESS_FIELDS),
    e_aged=PG_AGED_PRIORITY.format(
        priority="e.priority", enqueued_at="e.enqueued_at", aging_s="%(aging_s)s"
    ),
)


def jobs_progress(*, job_ids: Sequence[UUID]) -> list[CourseGenerationJob]:
    """The progress columns of these jobs (no visibility check: the caller checked when it
    started following), with their queue positions as `known_queue_position`."""
    if not db.hand_written_sql():
        has_course = ExpressionWrapper(Q(course__isnull=False), output_field=BooleanField())
        jobs: list[CourseGenerationJob] = list(
            CourseGenerationJob.objects.filter(pk__in=list(job_ids))
            .only(*PROGRESS_FIELDS)
            .annotate(has_course=has_course)
        )
        for job in jobs:
            job.known_queue_position = queue_position(job=job)  # type: ignore[attr-defined]
        return jobs
    params: dict[str, Any] = {
        "jobs": list(job_ids),
        "queued_job": JobStatus.QUEUED.value,
        "queued": QueueState.QUEUED.value,
        "aging_s": float(settings.COURSEGEN_QUEUE_AGING_S),
    }
    return list(CourseGenerationJob.objects.raw(_JOBS_PROGRESS_SQL, params))


def capacity_now() -> dict[str, int]:
    """Jobs waiting in the queue and jobs running now (claimed entries), in one query."""
    counts = QueueEntry.objects.filter(state__in=[QueueState.QUEUED, QueueState.CLAIMED]).aggregate(
        queued=Count("pk", filter=Q(state=QueueState.QUEUED)),
        running=Count("pk", filter=Q(state=QueueState.CLAIMED)),
    )
    return {"queued": counts["queued"], "running": counts["running"]}


def jobs_stuck(*, now: datetime) -> QuerySet[CourseGenerationJob]:
    """Running jobs the watchdog fails: started over COURSEGEN_JOB_WATCHDOG_S ago, with no live
    task (a live lease, or a deferred task due again later), no task picked up or finished
    since, and no live finalize lease. Whatever left them there (an exception in planning or
    finalize, messages lost for good), nothing is going to move them on."""
    cutoff = now - timedelta(seconds=settings.COURSEGEN_JOB_WATCHDOG_S)
    alive = GenerationTask.objects.filter(job=OuterRef("pk")).filter(
        Q(status=TaskStatus.RUNNING, lease_expires_at__gte=now)
        | Q(status=TaskStatus.PENDING, dispatched_at__gt=now)
        | Q(started_at__gte=cutoff)
        | Q(finished_at__gte=cutoff)
    )
    finalizing = Q(finalize_lease_expires_at__gte=now)
    # A batch job waits for its batch (up to a day) with no task moving: it is not stuck.
    in_batch = BatchRequest.objects.filter(task__job=OuterRef("pk"), status__in=BATCH_REQUEST_OPEN)
    return (
        CourseGenerationJob.objects.filter(status=JobStatus.RUNNING, started_at__lt=cutoff)
        .exclude(finalizing)
        .exclude(Exists(alive))
        .exclude(Exists(in_batch))
    )


def provider_constraints() -> list[ProviderConstraint]:
    """The constraint step of every (OpenAI-compatible server, model) the provider has called."""
    return list(ProviderConstraint.objects.order_by("base_url", "model")[:100])


def job_attempts(job_id: UUID) -> QuerySet[GenerationAttempt]:
    """The job's ledger: its tasks' attempts and its judge runs'. The ids are read first (two
    index lookups) so that the attempts are found by their own indexes: filtering on the job
    through a join, or an OR of two joins, was planned as a scan of the whole ledger, which
    grows with every course."""
    task_ids = list(GenerationTask.objects.filter(job_id=job_id).values_list("pk", flat=True))
    run_ids = list(JudgeRun.objects.filter(job_id=job_id).values_list("pk", flat=True))
    return GenerationAttempt.objects.filter(Q(task_id__in=task_ids) | Q(judge_run_id__in=run_ids))


def job_run_summary(job: CourseGenerationJob) -> dict[str, Any]:
    """A finished (or stopped) job's figures for scripts and checks (generate_course --json):
    its calls and their outcomes, first-attempt validity, tokens, cost, quality and failures.

    `first_attempt_valid_share`: of the tasks' first provider calls, the share whose reply was
    schema-valid JSON (content checks may still have asked for a repair: those errors carry the
    check's name); `first_attempt_ok_share`: the share that passed every check as well."""
    attempts = job_attempts(job.pk)
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in attempts.order_by("created_at", "number").values(
            "kind", "outcome", "errors", "task_id"
        )
    ]
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        by_outcome = counts.setdefault(row["kind"], {})
        by_outcome[row["outcome"]] = by_outcome.get(row["outcome"], 0) + 1
    firsts = list(_first_answers(rows).values())
    valid = [r for r in firsts if r["outcome"] == "ok" or _content_errors_only(r["errors"])]
    tasks = GenerationTask.objects.filter(job=job)
    failed = tasks.filter(status=TaskStatus.FAILED).order_by("position")
    return {
        "job_id": str(job.id),
        "status": job.status,
        "urgency": job.urgency,
        "tasks": tasks.count(),
        "calls": sum(1 for r in rows if r["kind"] != "cache"),
        "first_attempt_valid_share": round(len(valid) / len(firsts), 4) if firsts else None,
        "first_attempt_ok_share": (
            round(sum(r["outcome"] == "ok" for r in firsts) / len(firsts), 4) if firsts else None
        ),
        "attempts": counts,
        "tokens_in": job.input_tokens,
        "tokens_cached": job.cached_tokens,
        "tokens_out": job.output_tokens,
        "cost_usd": float(job.cost_usd),
        "quality": {"heuristic": job.quality_score, "judge": job.judge_score},
        "failed_tasks": [{"kind": t.kind, "key": t.key, "error": t.error} for t in failed],
        "error": job.error,
    }


def _first_answers(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Each task's first answered call (after any transport retries), in call order."""
    firsts: dict[Any, dict[str, Any]] = {}
    for row in rows:
        answered = row["outcome"] in ("ok", "invalid")
        if row["task_id"] and answered and row["kind"] in ("first", "transport_retry", "batch"):
            firsts.setdefault(row["task_id"], row)
    return firsts


def _content_errors_only(errors: Any) -> bool:
    """The reply parsed and met the schema: every error it had came from a content check."""
    return bool(errors) and all(isinstance(e, dict) and e.get("check") for e in errors)
