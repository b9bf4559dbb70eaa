"""Admin: policies are edited in place on the list; usage and violations are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ratelimits.models import RateLimitPolicy, RateLimitUsage, RateLimitViolation


@admin.register(RateLimitPolicy)
class RateLimitPolicyAdmin(admin.ModelAdmin):
    list_editable = [
        "per_minute",
        "per_hour",
        "per_day",
        "max_concurrent",
        "tasks_per_hour",
        "tasks_per_day",
        "regenerations_per_hour",
        "resumes_per_hour",
    ]
    list_display = ["role", *list_editable, "updated_at"]
    list_display_links = ["role"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["role", "updated_at"] if obj else ["updated_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # admission fails closed without a policy: edit limits, never remove them


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RateLimitUsage)
class RateLimitUsageAdmin(ReadOnlyAdmin):
    list_display = [
        "user",
        "role",
        "minute_count",
        "hour_count",
        "day_count",
        "active_jobs",
        "last_admitted_at",
    ]
    list_filter = ["role", "last_admitted_at"]
    search_fields = ["user__username", "user__email"]
    list_select_related = ["user"]


@admin.register(RateLimitViolation)
class RateLimitViolationAdmin(ReadOnlyAdmin):
    list_display = ["at", "user", "role", "window", "limit", "used", "retry_after_s", "reset_at"]
    list_filter = ["window", "role", "at"]
    search_fields = ["user__username", "user__email"]
    list_select_related = ["user"]
    date_hierarchy = "at"
