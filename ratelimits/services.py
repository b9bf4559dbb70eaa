"""Admission control for course generation, decided inside the transaction that creates the job.

`admission_check_and_record` locks the user's usage row, counts the user's admissions in each
sliding window and their unfinished jobs, and either records the admission or raises
`RateLimitExceeded`. Because the lock is a row lock in PostgreSQL, requests served by any number
of web processes queue on it one at a time, and each counts the admissions and jobs committed by
the ones before it: a burst can never pass a limit. A refused request rolls back with the job
transaction, so nothing is created; the caller then records the violation (`violation_record`).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from accounts.models import Role
from coursegen import db
from ratelimits.budgets import budget_admit
from ratelimits.models import (
    LIMIT_SPECS,
    LONGEST_WINDOW,
    WINDOW_LENGTHS,
    Admission,
    AdmissionKind,
    RateLimitPolicy,
    RateLimitUsage,
    RateLimitViolation,
    Window,
)
from ratelimits.selectors import (
    NotAMemberError,
    UsageReport,
    WindowUsage,
    fits_at,
    usage_report,
)

logger = logging.getLogger("coursegen.ratelimits")

# The specification's limits: (per minute, per hour, per day, concurrent jobs). Migration 0002
# seeds the same values; staff change them in the admin afterwards.
SPEC_POLICIES: dict[Role, tuple[int, int, int, int]] = {
    Role.STUDENT: (2, 10, 50, 1),
    Role.TEACHER: (5, 30, 200, 3),
    Role.ADMIN: (10, 100, 1000, 10),
}
# Paid work by size (tasks per hour, tasks per day, regenerations per hour, resumes per hour),
# seeded by migration 0003. The task budgets are the job limits above at the default course
# size (4 modules x 3 lessons = 43 tasks): default courses pass as before, larger ones weigh more.
SPEND_POLICIES: dict[Role, tuple[int, int, int, int]] = {
    Role.STUDENT: (430, 2150, 10, 3),
    Role.TEACHER: (1290, 8600, 60, 10),
    Role.ADMIN: (4300, 43000, 300, 30),
}
# Kinds of admission that occupy a concurrent-job slot.
SLOT_KINDS = (AdmissionKind.JOB, AdmissionKind.RESUME)


class RateLimitExceeded(Exception):  # the name says what happened, like Http404
    """A request over one of the caller's limits; carries what the 429 answer needs."""

    def __init__(
        self,
        *,
        role: Role,
        window: Window,
        limit: int,
        used: int,
        reset_at: datetime | None,
        retry_after_s: int,
        requested: int = 1,
    ) -> None:
        self.role, self.window, self.limit, self.used = role, window, limit, used
        self.reset_at, self.retry_after_s, self.requested = reset_at, retry_after_s, requested
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        if self.window == Window.CONCURRENT:
            return (
                f"Rate limit exceeded: at most {self.limit} unfinished course generation jobs "
                f"at a time for the {self.role} role; one frees when a job ends."
            )
        spec = LIMIT_SPECS[self.window]
        per = {1: "minute", 60: "hour", 1440: "day"}[int(spec.length.total_seconds()) // 60]
        detail = (
            f"Rate limit exceeded: at most {self.limit} {spec.noun} per {per} for the "
            f"{self.role} role"
        )
        if spec.weighted:
            detail += f"; this request is {self.requested} and {self.used} are used"
        return detail + "."


class RequestTooLarge(Exception):
    """A request larger than a whole window's budget of its caller's role: no wait admits it."""

    def __init__(self, *, role: Role, window: Window, limit: int, requested: int) -> None:
        self.role, self.window, self.limit, self.requested = role, window, limit, requested
        spec = LIMIT_SPECS[window]
        self.detail = (
            f"Too large: this request is {requested} generation tasks and the {role} role may "
            f"spend at most {limit} {spec.noun} per {Window(window).label.split()[-1]}."
        )
        super().__init__(self.detail)


def admission_check_and_record(
    *,
    user: User,
    organisation_id: UUID,
    now: datetime | None = None,
    kind: AdmissionKind = AdmissionKind.JOB,
    units: int = 1,
    batch: bool = False,
    slot: bool = True,
) -> UsageReport:
    """Admit one request of `kind` and size `units` (generation tasks) for `user` under the
    policy of the role they hold in `organisation_id` (read from the database with the usage;
    NotAMemberError when there is none), or raise RateLimitExceeded (RequestTooLarge when no
    wait would admit it). Then the organisation's monthly budget (ratelimits/budgets.py; its
    row is locked after the usage row): BudgetExceeded when the work's estimate (at the Batch
    API's price when `batch`) would take it over.

    `slot`: whether the work takes a concurrent-job slot of `user` (False when the job is another
    member's: see work_admit).

    Must run inside the transaction that creates the work. `now` defaults to the time read after
    the lock is taken, so the admissions log is written in lock order.
    """
    postgresql = db.hand_written_sql()
    _usage_lock(user=user)
    now = now or timezone.now()
    report = usage_report(user=user, organisation_id=organisation_id, now=now)
    exceeded = _exceeded(report, user=user, kind=kind, units=units, slot=slot)
    if exceeded is not None:
        raise exceeded
    budget_admit(organisation_id=organisation_id, units=units, batch=batch, now=now)
    counters = _usage_counters(report) if kind == AdmissionKind.JOB else {}
    if postgresql:
        _admission_write_postgresql(user=user, now=now, counters=counters, kind=kind, units=units)
    else:
        Admission.objects.create(user=user, admitted_at=now, kind=kind, units=units)
        RateLimitUsage.objects.filter(user=user).update(**counters, updated_at=now)
        # Keep the log bounded: nothing older than the longest window is ever counted again.
        Admission.objects.filter(user=user, admitted_at__lte=now - LONGEST_WINDOW).delete()
    return report


def work_admit(
    *,
    user: User,
    organisation_id: UUID,
    kind: AdmissionKind,
    units: int,
    slot_owner: User | None = None,
) -> bool:
    """Admission for paid work on an existing job (a regeneration, a resume), in the
    transaction that starts it. A staff user with no membership in the organisation is a
    platform operator: they have no role, so no role's limits apply to them (returns False,
    nothing recorded), but the organisation's budget does: it pays. Anyone else without a
    membership: NotAMemberError.

    `slot_owner`: the owner of a job the work puts back among the unfinished (a resume). The
    slot is theirs, so their concurrent-job limit applies, whoever asks; the asker's rate and
    task limits (and the budget) pay for the work. Both usage rows are locked, in one order."""
    other = slot_owner is not None and slot_owner.pk != user.pk
    if other:
        assert slot_owner is not None
        for locked in sorted((user, slot_owner), key=lambda u: u.pk):
            _usage_lock(user=locked)  # in pk order: two such admissions never wait in a cycle
    try:
        admission_check_and_record(
            user=user, organisation_id=organisation_id, kind=kind, units=units, slot=not other
        )
        admitted = True
    except NotAMemberError:
        if not user.is_staff:
            raise
        budget_admit(organisation_id=organisation_id, units=units)
        admitted = False
    if other:
        assert slot_owner is not None
        _slot_check(user=slot_owner, organisation_id=organisation_id)
    return admitted


def _slot_check(*, user: User, organisation_id: UUID) -> None:
    """RateLimitExceeded when `user` holds every concurrent-job slot their role allows (their
    usage row locked by the caller). An owner who left the organisation has no role: no limit."""
    try:
        report = usage_report(user=user, organisation_id=organisation_id, now=timezone.now())
    except NotAMemberError:
        return
    if report.active_jobs >= report.max_concurrent:
        raise _concurrent_exceeded(report)


def _usage_lock(*, user: User) -> None:
    if db.hand_written_sql():
        _usage_lock_postgresql(user=user)
    else:
        RateLimitUsage.objects.select_for_update().get_or_create(user=user)


# On PostgreSQL the admission is three round trips (lock, read, write) instead of seven: it runs
# on every submit. The lock must be its own statement: a statement's snapshot is taken before it
# waits for a lock, so reading in the locking statement would miss the holder's admission.
_LOCK_SQL = """
INSERT INTO course_generation_rate_limits (user_id, role, minute_count, hour_count, day_count,
    active_jobs, updated_at)
VALUES (%(user)s, '', 0, 0, 0, 0, %(now)s)
ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id
"""


def _usage_lock_postgresql(*, user: User) -> None:
    """Create the user's usage row or lock it, in one statement (select_for_update on
    get_or_create is two, three for a new user)."""
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL, {"user": user.pk, "now": timezone.now()})


_WRITE_SQL = """
WITH admitted AS (
    INSERT INTO course_generation_rate_limit_admissions (user_id, admitted_at, kind, units)
    VALUES (%(user)s, %(now)s, %(kind)s, %(units)s)
), pruned AS (
    DELETE FROM course_generation_rate_limit_admissions
    WHERE user_id = %(user)s AND admitted_at <= %(prune_before)s
)
UPDATE course_generation_rate_limits SET {counters}updated_at = %(now)s
WHERE user_id = %(user)s
"""


def _admission_write_postgresql(
    *, user: User, now: datetime, counters: dict[str, Any], kind: AdmissionKind, units: int
) -> None:
    """The admission, the usage snapshot and the pruning of the log, in one statement."""
    sql = _WRITE_SQL.format(counters="".join(f"{name} = %({name})s, " for name in counters))
    params = {
        "user": user.pk,
        "now": now,
        "prune_before": now - LONGEST_WINDOW,
        "kind": str(kind),
        "units": units,
        **counters,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _exceeded(
    report: UsageReport, *, user: User, kind: AdmissionKind, units: int, slot: bool = True
) -> RateLimitExceeded | None:
    """The binding limit among those that count `kind` (the concurrent-job one only when the
    work takes `user`'s slot): of all this request would pass, the one that frees last.
    RequestTooLarge when the request is larger than a whole window allows."""
    over = []
    for usage in report.windows:
        spec = LIMIT_SPECS[usage.window]
        if kind not in spec.kinds:
            continue
        size = units if spec.weighted else 1
        if size > usage.limit:
            raise RequestTooLarge(
                role=report.role, window=usage.window, limit=usage.limit, requested=size
            )
        if usage.used + size > usage.limit:
            over.append(_window_exceeded(report, usage, user=user, size=size))
    if slot and kind in SLOT_KINDS and report.active_jobs >= report.max_concurrent:
        over.append(_concurrent_exceeded(report))
    return max(over, key=lambda e: e.retry_after_s, default=None)


def _concurrent_exceeded(report: UsageReport) -> RateLimitExceeded:
    return RateLimitExceeded(
        role=report.role,
        window=Window.CONCURRENT,
        limit=report.max_concurrent,
        used=report.active_jobs,
        reset_at=None,
        retry_after_s=settings.COURSEGEN_RATELIMIT_CONCURRENT_RETRY_S,
    )


def _window_exceeded(
    report: UsageReport, usage: WindowUsage, *, user: User, size: int
) -> RateLimitExceeded:
    # When enough of the oldest admissions have left the window for this request to fit.
    need = usage.used + size - usage.limit
    reset_at = fits_at(user=user, window=usage.window, need=need, now=report.now)
    assert reset_at is not None  # size <= limit: the whole window frees at the latest
    wait_s = (reset_at - report.now).total_seconds()
    return RateLimitExceeded(
        role=report.role,
        window=usage.window,
        limit=usage.limit,
        used=usage.used,
        reset_at=reset_at,
        retry_after_s=max(math.ceil(wait_s), 1),
        requested=size,
    )


def _usage_counters(report: UsageReport) -> dict[str, Any]:
    """The usage row's counters as they stand with this admission included."""
    now = report.now
    counters: dict[str, Any] = {}
    for w in report.windows:
        if w.window not in WINDOW_LENGTHS:  # the row keeps the job-count windows only
            continue
        counters[f"{w.window}_count"] = w.used + 1
        counters[f"{w.window}_window_start"] = w.started_at or now
    counters.update(role=str(report.role), active_jobs=report.active_jobs + 1, last_admitted_at=now)
    return counters


def violation_record(
    *, user: User, exceeded: RateLimitExceeded, at: datetime | None = None
) -> RateLimitViolation:
    """Record a refused request (after its transaction rolled back, so the row survives),
    and raise (or count, within the dedup window) the user's rate-limit-violation alert."""
    from monitoring.models import AlertKind
    from monitoring.services import alert_raise

    violation = RateLimitViolation.objects.create(
        user=user,
        role=exceeded.role,
        window=exceeded.window,
        limit=exceeded.limit,
        used=exceeded.used,
        reset_at=exceeded.reset_at,
        retry_after_s=exceeded.retry_after_s,
        at=at or timezone.now(),
    )
    logger.warning("rate limit: user %s %s", user.pk, exceeded.detail)
    alert_raise(
        kind=AlertKind.RATE_LIMIT_VIOLATION,
        subject=f"user:{user.pk}",
        message=f"{user.get_username()} ({exceeded.role}): {exceeded.detail}",
        data={"window": exceeded.window, "limit": exceeded.limit, "used": exceeded.used},
    )
    return violation


def policies_seed() -> None:
    """Create any missing role policy with the specification's values; never overwrite edits."""
    for role, (minute, hour, day, concurrent) in SPEC_POLICIES.items():
        tasks_hour, tasks_day, regenerations, resumes = SPEND_POLICIES[role]
        RateLimitPolicy.objects.get_or_create(
            role=role,
            defaults={
                "per_minute": minute,
                "per_hour": hour,
                "per_day": day,
                "max_concurrent": concurrent,
                "tasks_per_hour": tasks_hour,
                "tasks_per_day": tasks_day,
                "regenerations_per_hour": regenerations,
                "resumes_per_hour": resumes,
            },
        )
