"""The rate-limit API: the caller's usage, and the 429 answer for a refused job request."""

from __future__ import annotations

from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from coursegen.drf import ErrorOutputSerializer, FieldErrorsOutputSerializer
from ratelimits.budgets import BudgetExceeded, budget_refusal_record
from ratelimits.models import LIMIT_SPECS
from ratelimits.selectors import (
    NotAMemberError,
    budget_report,
    membership_for_limits,
    usage_report,
)
from ratelimits.serializers import (
    BudgetExceededOutputSerializer,
    RateLimitExceededOutputSerializer,
    RequestTooLargeOutputSerializer,
    UserRateLimitsInputSerializer,
    UserRateLimitsOutputSerializer,
)
from ratelimits.services import RateLimitExceeded, RequestTooLarge


def too_many_requests(exceeded: RateLimitExceeded) -> Response:
    """The 429 for a refused request: the limit, its window, its reset, and Retry-After."""
    spec = LIMIT_SPECS.get(exceeded.window)  # None for the concurrent limit
    length = spec.length if spec else None
    body = RateLimitExceededOutputSerializer(
        {
            "detail": exceeded.detail,
            "role": exceeded.role,
            "window": exceeded.window,
            "window_seconds": int(length.total_seconds()) if length else None,
            "limit": exceeded.limit,
            "used": exceeded.used,
            "reset_at": exceeded.reset_at,
            "retry_after_s": exceeded.retry_after_s,
            "requested": exceeded.requested,
        }
    ).data
    return Response(
        body,
        status=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(exceeded.retry_after_s)},
    )


def payment_required(exc: BudgetExceeded) -> Response:
    """The 402 for paid work over the organisation's monthly budget (after its transaction
    rolled back): the budget, the spend so far, and when it resets; Retry-After till then."""
    budget_refusal_record(exceeded=exc)
    body = BudgetExceededOutputSerializer(exc.as_body()).data
    return Response(
        body,
        status=status.HTTP_402_PAYMENT_REQUIRED,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def too_large(exc: RequestTooLarge) -> Response:
    """The 400 for a request larger than its caller's role may spend in a whole window."""
    body = RequestTooLargeOutputSerializer(
        {
            "detail": exc.detail,
            "code": "request_too_large",
            "role": exc.role,
            "window": exc.window,
            "limit": exc.limit,
            "requested": exc.requested,
        }
    ).data
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


class UserRateLimitsApi(APIView):
    """The caller's job limits: per window used, remaining and reset time; unfinished jobs; the
    organisation's monthly budget, if it has one."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "organisation",
                OpenApiTypes.UUID,
                description="The id of an organisation you are a member of, whose role applies "
                "(default: your highest role); not a UUID: 400, not yours: 404.",
            )
        ],
        responses={
            200: UserRateLimitsOutputSerializer,
            400: OpenApiResponse(FieldErrorsOutputSerializer, description="Not a UUID"),
            404: OpenApiResponse(
                ErrorOutputSerializer, description="Not a member of that (or any) organisation"
            ),
        },
        operation_id="user_rate_limits",
    )
    def get(self, request: Request) -> Response:
        params = UserRateLimitsInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        organisation_id = params.validated_data.get("organisation")
        membership = membership_for_limits(
            user=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
            organisation_id=organisation_id,
        )
        where = "that organisation" if organisation_id else "any organisation"
        if membership is None:
            raise Http404(f"You are not a member of {where}.")
        try:
            report = usage_report(
                user=request.user,  # type: ignore[arg-type]
                organisation_id=membership.organisation_id,
                now=timezone.now(),
            )
        except NotAMemberError as exc:  # the membership went away since it was read
            raise Http404(f"You are not a member of {where}.") from exc
        data = {
            "role": report.role,
            "organisation": membership.organisation_id,
            "limits": report.windows,
            "active_jobs": report.active_jobs,
            "concurrent_limit": report.max_concurrent,
            "concurrent_remaining": max(report.max_concurrent - report.active_jobs, 0),
            "budget": budget_report(organisation_id=membership.organisation_id, now=report.now),
        }
        return Response(UserRateLimitsOutputSerializer(data).data)
