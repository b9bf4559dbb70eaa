"""Per-role limits on course generation, per-user usage, the admissions log and violations.

Admission is decided from the admissions log (sliding windows counted exactly) and the job rows
(concurrent jobs), under a lock on the user's usage row; see ratelimits/services.py.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from accounts.models import Role


class Window(models.TextChoices):
    MINUTE = "minute", "Per minute"
    HOUR = "hour", "Per hour"
    DAY = "day", "Per day"
    CONCURRENT = "concurrent", "Concurrent jobs"


# Sliding windows, shortest first. The longest one bounds how long admissions are kept.
WINDOW_LENGTHS: dict[Window, timedelta] = {
    Window.MINUTE: timedelta(minutes=1),
    Window.HOUR: timedelta(hours=1),
    Window.DAY: timedelta(days=1),
}
LONGEST_WINDOW = max(WINDOW_LENGTHS.values())


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
        return {
            Window.MINUTE: self.per_minute,
            Window.HOUR: self.per_hour,
            Window.DAY: self.per_day,
            Window.CONCURRENT: self.max_concurrent,
        }[window]


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
    """One row per admitted job request: the log sliding windows are counted from.

    Rows older than the longest window are pruned when the same user is next admitted.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="rate_limit_admissions",
        db_index=False,  # the (user, admitted_at) index serves every query
    )
    admitted_at = models.DateTimeField()

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
    window = models.CharField(max_length=16, choices=Window.choices)
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
