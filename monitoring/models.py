"""Monitoring records: structured log events (course_generation_logs) and alerts for staff.

Log rows reference jobs, tasks, users and organisations without database constraints: the log
handler writes from its own connection, often before the transaction that created the job has
committed, and a log line must never fail because of the row it talks about.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class LogLevel(models.TextChoices):
    DEBUG = "debug", "Debug"
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"
    CRITICAL = "critical", "Critical"


class CourseGenerationLog(models.Model):
    level = models.CharField(max_length=10, choices=LogLevel.choices)
    event = models.CharField(max_length=100, help_text="e.g. job.submitted, task.failed")
    message = models.TextField(blank=True)
    correlation_id = models.UUIDField(null=True, blank=True)
    job = models.ForeignKey(
        "generation.CourseGenerationJob",
        on_delete=models.CASCADE,  # a deleted job takes its story with it
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,  # covered by the (job, created_at) index
        related_name="logs",
    )
    task = models.ForeignKey(
        "generation.GenerationTask",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    organisation = models.ForeignKey(
        "accounts.Organisation",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    data = models.JSONField(default=dict, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    logger = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="host:pid that wrote it")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "course_generation_logs"
        ordering = ["-created_at"]
        indexes = [
            # The spec's "recent errors" query and the admin's level filter.
            models.Index(fields=["level", "-created_at"], name="cg_logs_level_created"),
            # One filter shows a job's whole story, in order.
            models.Index(fields=["correlation_id", "created_at"], name="cg_logs_corr_created"),
            models.Index(fields=["job", "created_at"], name="cg_logs_job_created"),
        ]
        verbose_name = "log event"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.level} {self.event}"


class AlertKind(models.TextChoices):
    CRITICAL_ERROR = "critical_error", "Critical error"
    RATE_LIMIT_VIOLATION = "rate_limit_violation", "Rate-limit violation"
    CAPACITY_WARNING = "capacity_warning", "Capacity warning"
    QUALITY_BELOW_THRESHOLD = "quality_below_threshold", "Quality below threshold"
    CIRCUIT_BREAKER_OPENED = "circuit_breaker_opened", "Circuit breaker opened"
    CONTENT_FLAGGED = "content_flagged", "Content flagged by moderation"
    BUDGET = "budget", "Monthly budget share reached"


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Alert(models.Model):
    """One problem for staff. Repeats of one kind and subject count into the open alert."""

    kind = models.CharField(max_length=32, choices=AlertKind.choices)
    severity = models.CharField(
        max_length=10, choices=AlertSeverity.choices, default=AlertSeverity.WARNING
    )
    subject = models.CharField(max_length=200, help_text="What it is about; the dedup key.")
    message = models.TextField(blank=True, help_text="The latest occurrence.")
    data = models.JSONField(default=dict, blank=True)
    count = models.PositiveIntegerField(default=1)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    closed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set on acknowledgement, or when a repeat comes after the dedup window.",
    )
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)
    # Whose alert it is: that organisation's administrators see it too. Empty: platform only.
    organisation = models.ForeignKey(
        "accounts.Organisation",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        related_name="+",
    )

    class Meta:
        db_table = "course_generation_alerts"
        ordering = ["-last_seen_at"]
        # Named permissions for the platform-wide views (docs/admin.md).
        permissions = [
            ("view_dashboard", "Can see the monitoring dashboard on the admin index"),
            ("view_metrics", "Can read /metrics with a session"),
        ]
        constraints = [
            # At most one open alert per kind and subject: concurrent raisers cannot both create.
            models.UniqueConstraint(
                fields=["kind", "subject"],
                condition=Q(closed_at__isnull=True),
                name="uniq_open_alert_per_kind_subject",
            )
        ]
        indexes = [
            models.Index(fields=["acknowledged_at", "-last_seen_at"], name="cg_alerts_ack_seen"),
            models.Index(fields=["kind", "-last_seen_at"], name="cg_alerts_kind_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.subject}"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def is_acknowledged(self) -> bool:
        return self.acknowledged_at is not None
