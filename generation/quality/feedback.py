"""Teachers' ratings of a course or of one of its tasks, stored as evaluations with evaluator
`human`: one current rating per person and target; a new one supersedes the previous (kept, with
`superseded_at`), so the history stays and the reports count each person once."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Membership, Role
from generation.models import CourseEvaluation, CourseGenerationJob, GenerationTask, JobStatus
from generation.rubric import HUMAN_EVALUATOR, to_unit
from generation.services import GenerationError
from monitoring.logs import log_event


@transaction.atomic
def rating_submit(
    *,
    job: CourseGenerationJob,
    user: User,
    rating: int,
    task: GenerationTask | None = None,
    comment: str = "",
    flags: Sequence[str] = (),
) -> tuple[CourseEvaluation, bool]:
    """Record `user`'s rating of the course (or of `task`); True when it replaced one."""
    # The job's row lock orders concurrent ratings: the partial unique index allows one current.
    locked = CourseGenerationJob.objects.select_for_update().only("status").get(pk=job.pk)
    if locked.status != JobStatus.SUCCEEDED:
        raise GenerationError(f"only a finished course can be rated; the job is {locked.status}")
    if task is not None and task.job_id != job.pk:
        raise ValueError("the task is not one of this job's")
    current = CourseEvaluation.objects.filter(
        job=job, task=task, rated_by=user, superseded_at__isnull=True
    )
    replaced = bool(current.update(superseded_at=timezone.now()))
    record = CourseEvaluation.objects.create(
        job=job,
        task=task,
        evaluator=HUMAN_EVALUATOR,
        rated_by=user,
        rating=rating,
        overall=to_unit(rating),
        criteria={"rating": to_unit(rating)},
        feedback=[comment] if comment else [],
        flags=list(flags),
        details={"rating": rating, "comment": comment, "flags": list(flags)},
    )
    target = f"{task.kind} {task.key}" if task else "the course"
    log_event(
        "feedback.rated",
        f"{user} rated {target} {rating}/5" + (f" ({', '.join(flags)})" if flags else ""),
        job=job,
        task=task,
        user=user,
        data={"rating": rating, "flags": list(flags), "replaced": replaced},
    )
    return record, replaced


def ratings_visible(*, job: CourseGenerationJob, user: User) -> QuerySet[CourseEvaluation]:
    """Current ratings of the job: all of them for its organisation's teachers and admins,
    the caller's own for anyone else who can see the job."""
    current = CourseEvaluation.objects.filter(
        job=job, evaluator=HUMAN_EVALUATOR, superseded_at__isnull=True
    ).select_related("rated_by", "task")
    staff = Membership.objects.filter(
        user=user, organisation_id=job.organisation_id, role__in=[Role.TEACHER, Role.ADMIN]
    ).exists()
    return current if staff else current.filter(rated_by=user)


def ratings_for_staff(
    *, user: User, evaluations: QuerySet[CourseEvaluation]
) -> QuerySet[CourseEvaluation]:
    """For the admin: machine evaluations, and the human ratings of the organisations `user` is
    a teacher or admin of (superusers see every rating)."""
    if getattr(user, "is_superuser", False):
        return evaluations
    orgs = Membership.objects.filter(user=user, role__in=[Role.TEACHER, Role.ADMIN]).values(
        "organisation_id"
    )
    return evaluations.filter(~Q(evaluator=HUMAN_EVALUATOR) | Q(job__organisation_id__in=orgs))
