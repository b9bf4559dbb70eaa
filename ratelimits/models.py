"""Per-role limits on course generation, per-user usage, the admissions log and violations.

Admission is decided from the admissions log (sliding windows counted exactly) and the job rows
(concurrent jobs), under a lock on the user's usage row; see ratelimits/services.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from accounts.models import Organisation, Role


class Window(models.TextChoices):
    MINUTE = "minute", "Jobs per minute"
    HOUR = "hour", "Jobs per hour"
    DAY = "day", "Jobs per day"
    CONCURRENT = "concurrent", "Concurrent jobs"
    TASKS_HOUR = "tasks_hour", "Tasks per hour"
    TASKS_DAY = "tasks_day", "Tasks per day"
    REGENERATIONS_HOUR = "regenerations_hour", "Regenerations per hour"
    RESUMES_HOUR = "resumes_hour", "Resumes per hour"


class AdmissionKind(models.TextChoices):
    """What was admitted: each is paid provider work, and each passes admission."""

    JOB = "job", "Course generation job"
    REGENERATION = "regeneration", "Task regeneration"
    RESUME = "resume", "Resume of failed tasks"


@dataclass(frozen=True)
class LimitSpec:
    """One sliding-window limit: its length, the admissions it counts and how (how many, or
    the sum of their sizes in tasks), and the policy field holding its limit."""

    length: timedelta
    kinds: tuple[AdmissionKind, ...]
    weighted: bool
    field: str
    noun: str


_ALL = tuple(AdmissionKind)
_JOBS = "course generation requests"
# Sliding-window limits, in the order the usage endpoint lists them. Every one of them is at most
# a day long: the longest bounds how long admissions are kept.
LIMIT_SPECS: dict[Window, LimitSpec] = {
    Window.MINUTE: LimitSpec(
        timedelta(minutes=1), (AdmissionKind.JOB,), False, "per_minute", _JOBS
    ),
    Window.HOUR: LimitSpec(timedelta(hours=1), (AdmissionKind.JOB,), False, "per_hour", _JOBS),
    Window.DAY: LimitSpec(timedelta(days=1), (AdmissionKind.JOB,), False, "per_day", _JOBS),
    Window.TASKS_HOUR: LimitSpec(
        timedelta(hours=1), _ALL, True, "tasks_per_hour", "generation tasks (paid provider work)"
    ),
    Window.TASKS_DAY: LimitSpec(
        timedelta(days=1), _ALL, True, "tasks_per_day", "generation tasks (paid provider work)"
    ),
    Window.REGENERATIONS_HOUR: LimitSpec(
        timedelta(hours=1),
        (AdmissionKind.REGENERATION,),
        False,
        "regenerations_per_hour",
        "task regenerations",
    ),
    Window.RESUMES_HOUR: LimitSpec(
        timedelta(hours=1), (AdmissionKind.RESUME,), False, "resumes_per_hour", "job resumes"
    ),
}
# The job-count windows, whose counts the usage row keeps a snapshot of.
WINDOW_LENGTHS: dict[Window, timedelta] = {
    w: LIMIT_SPECS[w].length for w in (Window.MINUTE, Window.HOUR, Window.DAY)
}
LONGEST_WINDOW = max(spec.length for spec in LIMIT_SPECS.values())


class RateLimitPolicy(models.Model):
    """One row per role; read on every admission, so an edit applies to the next request."""

    role = models.CharField(max_length=16, choices=Role.choices, unique=True)
    per_minute = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    per_hour = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    per_day = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    max_concurrent = models.PositiveIntegerField(
        validators=[MinValueValidator(1)],
        help_text="Jobs a user may have between admission and their end (queued or running).",
    )
    # Paid work, weighed by size: a job counts its planned tasks (1 + modules x (3 x lessons + 1)
    # + 2), a regeneration 1, a resume the tasks it puts back to work.
    tasks_per_hour = models.PositiveIntegerField(
        default=430,
        validators=[MinValueValidator(1)],
        help_text="Generation tasks (jobs by size, regenerations, resumes) per sliding hour.",
    )
    tasks_per_day = models.PositiveIntegerField(
        default=2150,
        validators=[MinValueValidator(1)],
        help_text="Generation tasks (jobs by size, regenerations, resumes) per sliding day.",
    )
    regenerations_per_hour = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1)], help_text="Task regenerations per hour."
    )
    resumes_per_hour = models.PositiveIntegerField(
        default=3, validators=[MinValueValidator(1)], help_text="Resumes of failed jobs per hour."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "course_generation_rate_limit_policies"
        ordering = ["per_day", "role"]
        verbose_name = "rate limit policy"
        verbose_name_plural = "rate limit policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(per_minute__gte=1, per_hour__gte=1, per_day__gte=1)
                & Q(max_concurrent__gte=1),
                name="rate_limit_policy_positive",
            )
        ]

    def __str__(self) -> str:
        return (
            f"{self.role}: {self.per_minute}/min, {self.per_hour}/hour, {self.per_day}/day, "
            f"{self.max_concurrent} concurrent"
        )

    def limit_for(self, window: Window) -> int:
        if window == Window.CONCURRENT:
            return self.max_concurrent
        return int(getattr(self, LIMIT_SPECS[window].field))


class RateLimitUsage(models.Model):
    """Per-user usage (the specification's table). Its row is also the lock admissions take.

    The counters are a snapshot written at each admission; decisions and the usage endpoint always
    count the admissions log and the job rows afresh.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rate_limit_usage"
    )
    role = models.CharField(max_length=16, choices=Role.choices, blank=True)
    minute_count = models.PositiveIntegerField(default=0)
    minute_window_start = models.DateTimeField(null=True, blank=True)
    hour_count = models.PositiveIntegerField(default=0)
    hour_window_start = models.DateTimeField(null=True, blank=True)
    day_count = models.PositiveIntegerField(default=0)
    day_window_start = models.DateTimeField(null=True, blank=True)
    active_jobs = models.PositiveIntegerField(default=0)
    last_admitted_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "course_generation_rate_limits"
        ordering = ["-last_admitted_at"]
        verbose_name = "rate limit usage"
        verbose_name_plural = "rate limit usage"

    def __str__(self) -> str:
        return f"{self.user}: {self.minute_count}/min, {self.hour_count}/h, {self.day_count}/day"


class Admission(models.Model):
    """One row per admitted request (a job, a regeneration, a resume) with its size in tasks:
    the log sliding windows are counted from.

    Rows older than the longest window are pruned when the same user is next admitted.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="rate_limit_admissions",
        db_index=False,  # the (user, admitted_at) index serves every query
    )
    admitted_at = models.DateTimeField()
    kind = models.CharField(
        max_length=16, choices=AdmissionKind.choices, default=AdmissionKind.JOB, db_default="job"
    )
    units = models.PositiveIntegerField(
        default=1, db_default=1, help_text="Its size in generation tasks."
    )

    class Meta:
        db_table = "course_generation_rate_limit_admissions"
        ordering = ["admitted_at"]
        indexes = [models.Index(fields=["user", "admitted_at"], name="rl_admission_user_at")]

    def __str__(self) -> str:
        return f"{self.user_id} admitted at {self.admitted_at:%Y-%m-%d %H:%M:%S}"


class RateLimitViolation(models.Model):
    """A refused job request: which limit, for whom, and when it would have been admitted."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rate_limit_violations"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    window = models.CharField(max_length=24, choices=Window.choices)
    limit = models.PositiveIntegerField()
    used = models.PositiveIntegerField()
    reset_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty for the concurrent limit: it frees when a job ends."
    )
    retry_after_s = models.PositiveIntegerField()
    at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "course_generation_rate_limit_violations"
        ordering = ["-at"]
        indexes = [models.Index(fields=["user", "-at"])]

    def __str__(self) -> str:
        return f"{self.user} over {self.limit} {self.window} ({self.role}) at {self.at:%H:%M:%S}"


class OrganisationBudget(models.Model):
    """An organisation's monthly spending cap in dollars (calendar months, UTC). No row: no cap.

    Admission locks this row (after the user's usage row) and weighs what the organisation has
    spent this month (the ledger) plus what admitted work will still cost (an estimate) plus the
    request's own estimate against `monthly_usd`; see ratelimits/budgets.py."""

    organisation = models.OneToOneField(
        Organisation, on_delete=models.CASCADE, primary_key=True, related_name="budget"
    )
    monthly_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Hard stop: paid work that would take this month's spend over it is refused.",
    )
    alert_share = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.8"),
        validators=[MinValueValidator(Decimal("0.01")), MaxValueValidator(Decimal(1))],
        help_text="Soft limit: one alert a month when spend (with admitted work) reaches this "
        "share of the budget.",
    )
    alerted_month = models.DateField(
        null=True, blank=True, help_text="The month (its first day) the soft alert was raised for."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "organisation_budgets"
        verbose_name = "organisation budget"
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_usd__gte=0, alert_share__gt=0, alert_share__lte=1),
                name="organisation_budget_valid",
            )
        ]

    def __str__(self) -> str:
        return f"{self.organisation}: ${self.monthly_usd} a month"
