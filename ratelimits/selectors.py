"""Reads for rate limits: the policy of a role, the role that applies, and live usage.

Windows slide: a window of length T counts the admissions in (now - T, now]. An admission leaves
the window exactly T after it was made, so `resets_at` is the moment a slot frees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.contrib.auth.models import User
from django.db.models import Count, Min, Q

from accounts.models import Membership, Role
from generation.models import JOB_TERMINAL, CourseGenerationJob
from ratelimits.models import WINDOW_LENGTHS, Admission, RateLimitPolicy, Window

ROLE_RANK = {Role.STUDENT: 0, Role.TEACHER: 1, Role.ADMIN: 2}


class PolicyMissingError(Exception):
    """No policy row for a role: admission fails closed rather than guessing a limit."""


@dataclass(frozen=True)
class WindowUsage:
    window: Window
    limit: int
    used: int
    started_at: datetime | None  # the oldest admission counted in the window
    resets_at: datetime | None  # when `remaining` next rises (None: nothing counted)

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def seconds(self) -> int:
        return int(WINDOW_LENGTHS[self.window].total_seconds())


@dataclass(frozen=True)
class UsageReport:
    role: Role
    windows: tuple[WindowUsage, ...]
    active_jobs: int
    max_concurrent: int
    now: datetime


def policy_get(*, role: Role) -> RateLimitPolicy:
    # Read from the table every time (one indexed row): no cache can serve a stale limit.
    policy = RateLimitPolicy.objects.filter(role=role).first()
    if policy is None:
        raise PolicyMissingError(f"no rate limit policy for role {role!r}")
    return policy


def membership_for_limits(*, user: User, organisation_id: UUID | None = None) -> Membership | None:
    """The membership whose role applies: the given organisation's, else the highest role."""
    memberships = Membership.objects.filter(user=user)
    if organisation_id is not None:
        return memberships.filter(organisation_id=organisation_id).first()
    return max(memberships, key=lambda m: ROLE_RANK[Role(m.role)], default=None)


def active_jobs_count(*, user: User) -> int:
    """Jobs holding a concurrency slot: admitted and not yet succeeded, failed or cancelled."""
    return CourseGenerationJob.objects.filter(owner=user).exclude(status__in=JOB_TERMINAL).count()


def usage_report(*, user: User, role: Role, now: datetime) -> UsageReport:
    policy = policy_get(role=role)
    aggregates: dict[str, Count | Min] = {}
    for window, length in WINDOW_LENGTHS.items():
        inside = Q(admitted_at__gt=now - length)
        aggregates[f"{window}_used"] = Count("pk", filter=inside)
        aggregates[f"{window}_start"] = Min("admitted_at", filter=inside)
    row = Admission.objects.filter(user=user).aggregate(**aggregates)
    windows = tuple(
        _window_usage(
            user=user,
            window=window,
            limit=policy.limit_for(window),
            used=row[f"{window}_used"],
            started_at=row[f"{window}_start"],
            now=now,
        )
        for window in WINDOW_LENGTHS
    )
    return UsageReport(
        role=role,
        windows=windows,
        active_jobs=active_jobs_count(user=user),
        max_concurrent=policy.max_concurrent,
        now=now,
    )


def _window_usage(
    *,
    user: User,
    window: Window,
    limit: int,
    used: int,
    started_at: datetime | None,
    now: datetime,
) -> WindowUsage:
    length = WINDOW_LENGTHS[window]
    if started_at is None:
        return WindowUsage(window, limit, used, None, None)
    # Over the limit (a policy was lowered): a slot frees only when the (used - limit + 1)-th
    # oldest admission leaves the window, not the oldest.
    excess = max(used - limit, 0)
    freeing = started_at
    if excess:
        freeing = (
            Admission.objects.filter(user=user, admitted_at__gt=now - length)
            .order_by("admitted_at")
            .values_list("admitted_at", flat=True)[excess]
        )
    return WindowUsage(window, limit, used, started_at, freeing + length)
