"""Reads for rate limits: the policy of a role, the role that applies, and live usage.

Windows slide: a window of length T counts the admissions in (now - T, now]. An admission leaves
the window exactly T after it was made, so `resets_at` is the moment a slot frees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from accounts.models import Membership, Role
from coursegen import db
from generation.models import (
    JOB_TERMINAL,
    REGENERATION_OPEN,
    TASK_TERMINAL,
    CourseGenerationJob,
    GenerationAttempt,
    RegenerationRequest,
    Urgency,
)
from ratelimits.models import LIMIT_SPECS, Admission, OrganisationBudget, RateLimitPolicy, Window

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


# --- Organisation budgets (ratelimits/budgets.py decides with these) ------------------------------
def month_start(now: datetime) -> datetime:
    """The first instant of `now`'s month, UTC: when this month's spend began."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    """When the budget resets: the first day of the next month, 00:00 UTC."""
    start = month_start(now)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


@dataclass(frozen=True)
class BudgetReport:
    organisation_id: UUID
    monthly_usd: Decimal
    alert_share: Decimal
    spent_usd: Decimal  # this month, from the ledger
    reserved_usd: Decimal  # admitted work not in the ledger yet (an estimate)
    month_start: datetime
    resets_at: datetime

    @property
    def committed_usd(self) -> Decimal:
        return self.spent_usd + self.reserved_usd

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.monthly_usd - self.committed_usd, Decimal(0))

    @property
    def alert_at_usd(self) -> Decimal:
        return self.monthly_usd * self.alert_share


def usd(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.000001")))


# The Batch API's half price (generation/pricing.py's BATCH_DISCOUNT; not imported from there: the
# dashboard reads these, and monitoring stays clear of the provider code pricing builds on).
BATCH_SHARE = Decimal("0.5")


def work_estimate_usd(*, units: int, batch: bool = False) -> Decimal:
    """What `units` generation tasks are expected to cost."""
    per_task = Decimal(str(settings.COURSEGEN_BUDGET_TASK_ESTIMATE_USD))
    return units * per_task * (BATCH_SHARE if batch else 1)


def spent_this_month(*, organisation_id: UUID, now: datetime) -> Decimal:
    """The organisation's ledger since the first of the month: every provider call of its jobs'
    tasks and of the judge on its courses."""
    since = month_start(now)
    calls = GenerationAttempt.objects.filter(created_at__gte=since)
    of_tasks = calls.filter(task__job__organisation_id=organisation_id).aggregate(s=Sum("cost_usd"))
    of_judge = calls.filter(judge_run__job__organisation_id=organisation_id).aggregate(
        s=Sum("cost_usd")
    )
    return (of_tasks["s"] or Decimal(0)) + (of_judge["s"] or Decimal(0))


def reserved_now(*, organisation_id: UUID) -> Decimal:
    """What admitted work of the organisation will still cost: the planned tasks its unfinished
    jobs have not finished yet, and its open regenerations."""
    jobs = (
        CourseGenerationJob.objects.filter(organisation_id=organisation_id)
        .exclude(status__in=JOB_TERMINAL)
        .annotate(finished=Count("tasks", filter=Q(tasks__status__in=TASK_TERMINAL)))
        .values_list("request", "urgency", "finished")
    )
    reserved = Decimal(0)
    for request, urgency, finished in jobs:
        left = max(_planned_tasks(request) - finished, 0)
        reserved += work_estimate_usd(units=left, batch=urgency == Urgency.BATCH)
    regenerations = RegenerationRequest.objects.filter(
        task__job__organisation_id=organisation_id, status__in=REGENERATION_OPEN
    ).count()
    return reserved + work_estimate_usd(units=regenerations)


def _planned_tasks(request: dict[str, Any]) -> int:
    # CourseRequest.task_count, from the stored JSON without validating it again.
    modules, lessons = int(request.get("num_modules", 4)), int(request.get("lessons_per_module", 3))
    return 1 + modules * (3 * lessons + 1) + 2


def budget_report(
    *, organisation_id: UUID, now: datetime | None = None, budget: OrganisationBudget | None = None
) -> BudgetReport | None:
    """The organisation's month against its budget; None when it has none."""
    budget = budget or OrganisationBudget.objects.filter(organisation_id=organisation_id).first()
    if budget is None:
        return None
    now = now or timezone.now()
    return BudgetReport(
        organisation_id=organisation_id,
        monthly_usd=budget.monthly_usd,
        alert_share=budget.alert_share,
        spent_usd=spent_this_month(organisation_id=organisation_id, now=now),
        reserved_usd=reserved_now(organisation_id=organisation_id),
        month_start=month_start(now),
        resets_at=next_month_start(now),
    )


@dataclass(frozen=True)
class OrganisationBudgetRow:
    organisation_name: str
    report: BudgetReport

    @property
    def committed_share(self) -> float | None:
        r = self.report
        return float(r.committed_usd / r.monthly_usd) if r.monthly_usd else None


def budget_rows(*, organisation_ids: list[UUID] | None = None) -> list[OrganisationBudgetRow]:
    """This month against the budget, for every organisation that has one (or the ones named),
    most committed first."""
    budgets = OrganisationBudget.objects.select_related("organisation")
    if organisation_ids is not None:
        budgets = budgets.filter(organisation_id__in=organisation_ids)
    now = timezone.now()
    rows = []
    for budget in budgets:
        report = budget_report(organisation_id=budget.organisation_id, now=now, budget=budget)
        assert report is not None
        rows.append(OrganisationBudgetRow(budget.organisation.name, report))
    return sorted(rows, key=lambda row: -(row.committed_share or 0))
