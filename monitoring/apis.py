"""The health endpoint. It is the one endpoint open without authentication, for load balancers:
anonymous callers get the status and the names of failing parts only; staff (session or token)
also get every check's details."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring.health import health_report


class CourseGenerationHealthApi(APIView):
    permission_classes = [AllowAny]
    throttle_classes = []  # load balancers poll it; a 429 would read as "down"

    @extend_schema(
        responses={
            200: OpenApiResponse(description="Healthy"),
            503: OpenApiResponse(description="Unhealthy; `failing` names the failing parts"),
        },
        operation_id="health_course_generation",
    )
    def get(self, request: Request) -> Response:
        report = health_report()
        if not (request.user and request.user.is_staff):
            report = {key: report[key] for key in ("status", "failing")}
        response = Response(report, status=503 if report["failing"] else 200)
        response["Cache-Control"] = "no-store"
        return response
