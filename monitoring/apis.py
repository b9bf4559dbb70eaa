"""Health endpoints, the only ones open without authentication (load balancers call them).

- `GET /health/live`: liveness. The process answers; nothing else is touched (no database, no
  cache, no broker), so it is cheap enough to leave unthrottled.
- `GET /api/health/course-generation`: readiness. The report (database, Redis, broker, workers,
  capacity ...) is cached for MONITORING_HEALTH_CACHE_S and shared by every caller
  (monitoring.health.cached_health_report), and calls are throttled per client
  (MONITORING_HEALTH_RATE). Anonymous callers get the status alone; staff sessions and
  `Authorization: Bearer <MONITORING_HEALTH_TOKEN>` also get every check's details.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring.health import cached_health_report
from ratelimits.serializers import RateLimitExceededOutputSerializer
from ratelimits.throttling import ApiRateThrottle


@require_GET
def liveness(request: HttpRequest) -> JsonResponse:
    response = JsonResponse({"status": "alive"})
    response["Cache-Control"] = "no-store"
    return response


class HealthRateThrottle(ApiRateThrottle):
    group = "health"

    def rate(self) -> str:
        return str(settings.MONITORING_HEALTH_RATE)


def _sees_details(request: Request) -> bool:
    token = settings.MONITORING_HEALTH_TOKEN
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    return bool(request.user and request.user.is_staff)


_STATUS_ONLY = inline_serializer(
    "HealthStatus",
    {"status": serializers.ChoiceField(choices=["healthy", "unhealthy"])},
)


class CourseGenerationHealthApi(APIView):
    permission_classes = [AllowAny]
    throttle_classes = [HealthRateThrottle]

    @extend_schema(
        responses={
            200: OpenApiResponse(
                _STATUS_ONLY, description="Ready. Staff or the health token also get `checks`."
            ),
            503: OpenApiResponse(
                _STATUS_ONLY,
                description="Not ready; staff or the health token also see `failing`.",
            ),
            429: OpenApiResponse(
                RateLimitExceededOutputSerializer,  # every throttle's 429 body (window requests)
                description="Over MONITORING_HEALTH_RATE for this client; see `Retry-After`.",
            ),
        },
        operation_id="health_course_generation",
    )
    def get(self, request: Request) -> Response:
        report = cached_health_report()
        status = 503 if report["failing"] else 200
        if not _sees_details(request):
            report = {"status": report["status"]}
        response = Response(report, status=status)
        response["Cache-Control"] = "no-store"
        return response
