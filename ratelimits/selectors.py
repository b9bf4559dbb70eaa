"""Reads for rate limits: the policy of a role, the role that applies, and live usage.

Windows slide: a window of length T counts the admissions in (now - T, now]. An admission leaves
the window exactly T after it was made, so `resets_at` is the moment a slot frees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, Min, Q, Sum

from accounts.models import Membership, Role
from coursegen import db
from generation.models import JOB_TERMINAL, CourseGenerationJob
from ratelimits.models import LIMIT_SPECS, Admission, RateLimitPolicy, Window

ROLE_RANK = {Role.STUDENT: 0, Role.TEACHER: 1, Role.ADMIN: 2}


class PolicyMissingError(Exception):
    """No policy row for a role: admission fails closed rather than guessing a limit."""


class NotAMemberError(Exception):
    """The user has no membership (and so no role) in the organisation asked about."""


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
        return int(LIMIT_SPECS[self.window].length.total_seconds())


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


def usage_report(*, user: User, organisation_id: UUID, now: datetime) -> UsageReport:
    """The user's usage of every window and their unfinished jobs against the policy of the role
    they hold in `organisation_id` (read with the usage, so admission needs no separate membership
    read). Raises NotAMemberError or PolicyMissingError."""
    if db.hand_written_sql():
        policy, counted, active = _usage_postgresql(
            user=user, organisation_id=organisation_id, now=now
        )
    else:
        policy, counted, active = _usage_orm(user=user, organisation_id=organisation_id, now=now)
    windows = tuple(
        _window_usage(
            user=user,
            window=window,
            limit=policy.limit_for(window),
            used=counted[f"{window}_used"] or 0,
            started_at=counted[f"{window}_start"],
            now=now,
        )
        for window in LIMIT_SPECS
    )
    return UsageReport(
        role=Role(policy.role),
        windows=windows,
        active_jobs=active,
        max_concurrent=policy.max_concurrent,
        now=now,
    )


def _usage_orm(
    *, user: User, organisation_id: UUID, now: datetime
) -> tuple[RateLimitPolicy, dict[str, Any], int]:
    membership = Membership.objects.filter(user=user, organisation_id=organisation_id).first()
    if membership is None:
        raise NotAMemberError(f"user {user.pk} is not a member of {organisation_id}")
    policy = policy_get(role=Role(membership.role))
    aggregates: dict[str, Count | Min | Sum] = {}
    for window, spec in LIMIT_SPECS.items():
        inside = Q(admitted_at__gt=now - spec.length, kind__in=spec.kinds)
        measure = Sum("units", filter=inside) if spec.weighted else Count("pk", filter=inside)
        aggregates[f"{window}_used"] = measure
        aggregates[f"{window}_start"] = Min("admitted_at", filter=inside)
    counted = Admission.objects.filter(user=user).aggregate(**aggregates)
    return policy, counted, active_jobs_count(user=user)


def _inside(window: Window) -> str:
    kinds = ", ".join(f"'{k}'" for k in LIMIT_SPECS[window].kinds)  # constants, not input
    return f"admitted_at > %({window}_since)s AND kind IN ({kinds})"


# The same reads as _usage_orm (the user's role in the organisation, its policy, the window
# counts, unfinished jobs) in one round trip: admission runs on every submit, and compiling these
# through the ORM was a third of a submit.
_USAGE_SQL = """
SELECT m.role, p.per_minute, p.per_hour, p.per_day, p.max_concurrent, p.tasks_per_hour,
    p.tasks_per_day, p.regenerations_per_hour, p.resumes_per_hour, a.*,
    (SELECT count(*) FROM course_generation_jobs j
     WHERE j.owner_id = %(user)s AND NOT (j.status = ANY(%(terminal)s))) AS active_jobs
FROM (SELECT {windows} FROM course_generation_rate_limit_admissions WHERE user_id = %(user)s) a
LEFT JOIN memberships m ON m.user_id = %(user)s AND m.organisation_id = %(org)s
LEFT JOIN course_generation_rate_limit_policies p ON p.role = m.role
""".format(
    windows=", ".join(
        f"{'sum(units)' if spec.weighted else 'count(*)'} FILTER (WHERE {_inside(w)}) AS {w}_used, "
        f"min(admitted_at) FILTER (WHERE {_inside(w)}) AS {w}_start"
        for w, spec in LIMIT_SPECS.items()
    )
)


def _usage_postgresql(
    *, user: User, organisation_id: UUID, now: datetime
) -> tuple[RateLimitPolicy, dict[str, Any], int]:
    params: dict[str, Any] = {
        "user": user.pk,
        "org": organisation_id,
        "terminal": [str(s) for s in JOB_TERMINAL],
        **{f"{w}_since": now - spec.length for w, spec in LIMIT_SPECS.items()},
    }
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_SQL, params)
        names = [column[0] for column in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
    if row["role"] is None:
        raise NotAMemberError(f"user {user.pk} is not a member of {organisation_id}")
    if row["per_minute"] is None:
        raise PolicyMissingError(f"no rate limit policy for role {row['role']!r}")
    policy = RateLimitPolicy(
        role=Role(row["role"]),
        per_minute=row["per_minute"],
        per_hour=row["per_hour"],
        per_day=row["per_day"],
        max_concurrent=row["max_concurrent"],
        tasks_per_hour=row["tasks_per_hour"],
        tasks_per_day=row["tasks_per_day"],
        regenerations_per_hour=row["regenerations_per_hour"],
        resumes_per_hour=row["resumes_per_hour"],
    )
    return policy, row, row["active_jobs"]


def _window_usage(
    *,
    user: User,
    window: Window,
    limit: int,
    used: int,
    started_at: datetime | None,
    now: datetime,
) -> WindowUsage:
    if started_at is None:
        return WindowUsage(window, limit, used, None, None)
    # Over the limit (a policy was lowered): `remaining` rises only when enough of the oldest
    # admissions have left the window to bring the usage below the limit, not at the oldest.
    freeing = started_at + LIMIT_SPECS[window].length
    if used >= limit:
        freeing = fits_at(user=user, window=window, need=used - limit + 1, now=now) or freeing
    return WindowUsage(window, limit, used, started_at, freeing)


def fits_at(*, user: User, window: Window, need: int, now: datetime) -> datetime | None:
    """When `need` units (or admissions) will have left `window`: the moment the oldest
    admissions in it that add up to `need` have all slid out (None: never, within the window)."""
    spec = LIMIT_SPECS[window]
    if need <= 0:
        return now
    inside = Admission.objects.filter(
        user=user, admitted_at__gt=now - spec.length, kind__in=spec.kinds
    ).order_by("admitted_at")
    freed = 0
    for admitted_at, units in inside.values_list("admitted_at", "units"):
        freed += units if spec.weighted else 1
        if freed >= need:
            return admitted_at + spec.length
    return None
