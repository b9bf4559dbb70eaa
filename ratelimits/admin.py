"""Admin: policies and organisation budgets are edited here; usage and violations are
read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ratelimits.models import (
    OrganisationBudget,
    RateLimitPolicy,
    RateLimitUsage,
    RateLimitViolation,
)
from ratelimits.selectors import BudgetReport, budget_report


@admin.register(RateLimitPolicy)
class RateLimitPolicyAdmin(admin.ModelAdmin):
    organisation_path = None  # platform-only (accounts/tenancy.py)
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
    organisation_path = "user__memberships__organisation"  # whose rows: accounts/tenancy.py
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
    organisation_path = "user__memberships__organisation"  # whose rows: accounts/tenancy.py
    list_display = ["at", "user", "role", "window", "limit", "used", "retry_after_s", "reset_at"]
    list_filter = ["window", "role", "at"]
    search_fields = ["user__username", "user__email"]
    list_select_related = ["user"]
    date_hierarchy = "at"


@admin.register(OrganisationBudget)
class OrganisationBudgetAdmin(admin.ModelAdmin):
    """Each organisation's monthly cap with this month's spend (the ledger) and the work under
    way; an edit applies to the next admission."""

    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "organisation",
        "monthly_usd",
        "alert_share",
        "spent_this_month",
        "reserved",
        "used_share",
        "alerted_month",
        "updated_at",
    ]
    list_select_related = ["organisation"]
    search_fields = ["organisation__name", "organisation__slug"]
    autocomplete_fields = ["organisation"]
    readonly_fields = ["alerted_month", "updated_at"]

    def _report(self, budget: OrganisationBudget) -> BudgetReport:
        report = budget_report(organisation_id=budget.organisation_id, budget=budget)
        assert report is not None
        return report

    @admin.display(description="spent this month ($)")
    def spent_this_month(self, budget: OrganisationBudget) -> str:
        return f"{self._report(budget).spent_usd:.4f}"

    @admin.display(description="work under way ($, estimate)")
    def reserved(self, budget: OrganisationBudget) -> str:
        return f"{self._report(budget).reserved_usd:.4f}"

    @admin.display(description="committed / budget")
    def used_share(self, budget: OrganisationBudget) -> str:
        report = self._report(budget)
        if not report.monthly_usd:
            return "-"
        return f"{report.committed_usd / report.monthly_usd:.0%}"
