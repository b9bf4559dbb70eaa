"""Read-side queries for jobs, scoped to what the caller may see.

Teachers and admins see their organisations' jobs; students see their own. Anything else is
invisible, so the API answers 404 rather than 403 and does not reveal that it exists.
"""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from accounts.models import Membership, Role
from generation.models import CourseGenerationJob, QueueEntry, QueueState


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


def queue_position(*, job: CourseGenerationJob) -> int | None:
    """1 for the next job to start; None when the job is not waiting."""
    entry = QueueEntry.objects.filter(job=job, state=QueueState.QUEUED).first()
    if entry is None:
        return None
    ahead = QueueEntry.objects.filter(state=QueueState.QUEUED).filter(
        Q(priority__lt=entry.priority)
        | Q(priority=entry.priority, enqueued_at__lt=entry.enqueued_at)
    )
    return ahead.count() + 1
