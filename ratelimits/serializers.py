"""Input and output serializers for the rate-limit API and the 429 answer."""

from __future__ import annotations

from rest_framework import serializers

from coursegen.drf import ClosedOutputSerializer
from ratelimits.models import Window

# The request throttle's window (COURSEGEN_API_RATE): every API request of a client counts.
REQUESTS_WINDOW = "requests"
THROTTLE_WINDOWS = [*Window.choices, (REQUESTS_WINDOW, "API requests (any endpoint)")]


class RateLimitExceededOutputSerializer(ClosedOutputSerializer):
    """Every 429 of the API: job admission's limits and the request throttle alike."""

    detail = serializers.CharField()
    role = serializers.CharField(
        allow_null=True,
        help_text="The role whose limit applies; null for the request throttle "
        "(window requests), which is the same for every client.",
    )
    window = serializers.ChoiceField(choices=THROTTLE_WINDOWS)
    window_seconds = serializers.IntegerField(
        allow_null=True, help_text="The window's length; null for the concurrent limit."
    )
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    reset_at = serializers.DateTimeField(
        allow_null=True, help_text="When a slot frees; null for the concurrent limit."
    )
    retry_after_s = serializers.IntegerField(help_text="Also sent as the Retry-After header.")
    requested = serializers.IntegerField(
        help_text="This request's size: 1, or generation tasks for the tasks_* windows."
    )


class BudgetExceededOutputSerializer(ClosedOutputSerializer):
    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["budget_exceeded"])
    organisation = serializers.UUIDField()
    budget_usd = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True)
    spent_usd = serializers.DecimalField(
        max_digits=14, decimal_places=6, help_text="Spent this month (UTC), from the ledger."
    )
    reserved_usd = serializers.DecimalField(
        max_digits=14, decimal_places=6, help_text="Estimated cost of admitted work under way."
    )
    requested_usd = serializers.DecimalField(
        max_digits=14, decimal_places=6, help_text="This request's estimated cost."
    )
    month_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(help_text="The first day of next month, 00:00 UTC.")
    retry_after_s = serializers.IntegerField(help_text="Also sent as the Retry-After header.")


class BudgetUsageOutputSerializer(serializers.Serializer):
    monthly_usd = serializers.DecimalField(max_digits=12, decimal_places=2)
    alert_share = serializers.DecimalField(max_digits=4, decimal_places=3)
    spent_usd = serializers.DecimalField(
        max_digits=14, decimal_places=6, help_text="Spent this month (UTC), from the ledger."
    )
    reserved_usd = serializers.DecimalField(
        max_digits=14, decimal_places=6, help_text="Estimated cost of admitted work under way."
    )
    remaining_usd = serializers.DecimalField(max_digits=14, decimal_places=6)
    month_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(help_text="The first day of next month, 00:00 UTC.")


class RequestTooLargeOutputSerializer(ClosedOutputSerializer):
    """400 (code request_too_large): more work than the role may spend in a whole window."""

    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["request_too_large"])
    role = serializers.CharField()
    window = serializers.ChoiceField(choices=Window.choices)
    limit = serializers.IntegerField()
    requested = serializers.IntegerField(help_text="This request's size in generation tasks.")


class UserRateLimitsInputSerializer(serializers.Serializer):
    organisation = serializers.UUIDField(
        required=False, help_text="Whose role applies; default: your highest role."
    )


class WindowUsageOutputSerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=Window.choices)
    window_seconds = serializers.IntegerField(source="seconds")
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    remaining = serializers.IntegerField()
    resets_at = serializers.DateTimeField(
        allow_null=True, help_text="When the oldest counted request leaves the window."
    )


class UserRateLimitsOutputSerializer(serializers.Serializer):
    role = serializers.CharField()
    organisation = serializers.UUIDField(help_text="The organisation whose role applies.")
    limits = WindowUsageOutputSerializer(many=True)
    active_jobs = serializers.IntegerField(help_text="Your jobs queued or running.")
    concurrent_limit = serializers.IntegerField()
    concurrent_remaining = serializers.IntegerField()
    budget = BudgetUsageOutputSerializer(
        allow_null=True,
        help_text="The organisation's monthly budget in dollars; null when it has none.",
    )
