"""Admin screens for log events and alerts. The dashboard itself is on the admin index
(templates/admin/index.html) and a job's story on its change page."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from monitoring.models import Alert, CourseGenerationLog
from monitoring.services import alert_acknowledge

LOG_FIELDS: tuple[str, ...] = (
    "created_at",
    "level",
    "event",
    "message",
    "correlation_id",
    "job_id",
    "task_id",
    "user_id",
    "organisation_id",
    "data",
    "duration_ms",
    "logger",
    "source",
)
ALERT_FIELDS: tuple[str, ...] = (
    "kind",
    "severity",
    "subject",
    "message",
    "data",
    "count",
    "first_seen_at",
    "last_seen_at",
    "closed_at",
    "acknowledged_by",
    "acknowledged_at",
    "emailed_at",
)


@admin.register(CourseGenerationLog)
class LogAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "created_at",
        "level",
        "event",
        "short_message",
        "correlation",
        "job_link",
        "task_id",
        "user_id",
        "organisation_id",
        "duration_ms",
        "source",
    ]
    # One filter shows a job's story: ?correlation_id=<uuid> (the job page links to it).
    list_filter = ["level", "created_at"]
    search_fields = ["=correlation_id", "=event"]
    search_help_text = "Exact correlation id or event name (e.g. task.failed)."
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    list_per_page = 100
    readonly_fields = LOG_FIELDS
    fields = LOG_FIELDS

    @admin.display(description="message")
    def short_message(self, log: CourseGenerationLog) -> str:
        return log.message[:160]

    @admin.display(description="correlation id")
    def correlation(self, log: CourseGenerationLog) -> str:
        if log.correlation_id is None:
            return "-"
        url = reverse("admin:monitoring_coursegenerationlog_changelist")
        return format_html(
            '<a href="{}?correlation_id={}">{}</a>',
            url,
            log.correlation_id,
            str(log.correlation_id)[:8],
        )

    @admin.display(description="job")
    def job_link(self, log: CourseGenerationLog) -> str:
        if log.job_id is None:
            return "-"
        url = reverse("admin:generation_coursegenerationjob_change", args=[log.job_id])
        return format_html('<a href="{}">{}</a>', url, str(log.job_id)[:8])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AcknowledgedFilter(admin.SimpleListFilter):
    title = "acknowledged"
    parameter_name = "acknowledged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Not yet"), ("yes", "Acknowledged")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Alert]) -> QuerySet[Alert]:
        if self.value() == "no":
            return queryset.filter(acknowledged_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(acknowledged_at__isnull=False)
        return queryset


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "last_seen_at",
        "severity",
        "kind",
        "subject",
        "count",
        "first_seen_at",
        "is_open",
        "acknowledged_by",
        "acknowledged_at",
    ]
    list_filter = [AcknowledgedFilter, "kind", "severity", "last_seen_at"]
    search_fields = ["subject", "message"]
    list_select_related = ["acknowledged_by"]
    actions = ["acknowledge"]
    readonly_fields = ALERT_FIELDS
    fields = ALERT_FIELDS

    @admin.display(boolean=True, description="open")
    def is_open(self, alert: Alert) -> bool:
        return alert.is_open

    @admin.action(description="Acknowledge the selected alerts", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        count = alert_acknowledge(alerts=queryset, user=request.user)  # type: ignore[arg-type]
        self.message_user(request, f"Acknowledged {count} alert(s).")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Read-only pages; the acknowledge action is what staff do here.
        return obj is None and super().has_change_permission(request, obj)
