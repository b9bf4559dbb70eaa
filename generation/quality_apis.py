"""The quality API: teachers' ratings of a course (POST/GET /api/jobs/{id}/feedback/) and the
A/B experiments, read-only, for staff (GET /api/experiments/, /api/experiments/{id}/)."""

from __future__ import annotations

from uuid import UUID

from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import is_organisation_admin
from coursegen.drf import LimitOffsetPagination
from coursegen.openapi import error
from generation.models import CourseGenerationJob, Experiment
from generation.quality import feedback
from generation.quality_serializers import (
    ExperimentOutputSerializer,
    ExperimentReportOutputSerializer,
    FeedbackInputSerializer,
    FeedbackOutputSerializer,
)
from generation.selectors import job_get_visible
from generation.services import GenerationError


def _visible_job(request: Request, job_id: UUID) -> CourseGenerationJob:
    job = job_get_visible(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("No such job.")
    return job


class JobFeedbackApi(APIView):
    """Rate a finished course, or one of its tasks, from 1 to 5 with an optional comment and
    flags. One current rating per person and target: rating again replaces it."""

    @extend_schema(responses=FeedbackOutputSerializer(many=True), operation_id="jobs_feedback_list")
    def get(self, request: Request, job_id: UUID) -> Response:
        job = _visible_job(request, job_id)
        ratings = feedback.ratings_visible(job=job, user=request.user)  # type: ignore[arg-type]
        return Response(FeedbackOutputSerializer(ratings, many=True).data)

    @extend_schema(
        request=FeedbackInputSerializer,
        responses={
            201: FeedbackOutputSerializer,
            200: OpenApiResponse(FeedbackOutputSerializer, description="Replaced your rating"),
            409: error("The course is not finished"),
        },
        operation_id="jobs_feedback",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = _visible_job(request, job_id)
        serializer = FeedbackInputSerializer(data=request.data, context={"job": job})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            record, replaced = feedback.rating_submit(
                job=job,
                user=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
                rating=data["rating"],
                task=data["task"],
                comment=data["comment"],
                flags=data["flags"],
            )
        except GenerationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        code = status.HTTP_200_OK if replaced else status.HTTP_201_CREATED
        return Response(FeedbackOutputSerializer(record).data, status=code)


def _staff_only(request: Request) -> None:
    """Experiments span every organisation: staff who may view them in the admin only."""
    user = request.user
    # Organisation administrators are staff scoped to their organisations; experiments span all
    # of them, so they are refused even when granted the permission (as in the admin).
    allowed = user.is_staff and user.has_perm("generation.view_experiment")
    if not allowed or is_organisation_admin(user):
        raise PermissionDenied("Experiments are for staff with permission to view them.")


STAFF_ONLY = error("Not staff with permission to view experiments")


class ExperimentCollectionApi(APIView):
    """A/B experiments, newest first, with their variants and promotions, a page at a time."""

    pagination_class = LimitOffsetPagination  # also how the schema knows the list is paginated

    @extend_schema(
        responses={200: ExperimentOutputSerializer(many=True), 403: STAFF_ONLY},
        operation_id="experiments_list",
    )
    def get(self, request: Request) -> Response:
        _staff_only(request)
        paginator = self.pagination_class()
        experiments = Experiment.objects.prefetch_related("variants").select_related("stopped_by")
        page = paginator.paginate_queryset(experiments.order_by("-created_at"), request, view=self)
        return paginator.get_paginated_response(ExperimentOutputSerializer(page, many=True).data)


class ExperimentDetailApi(APIView):
    """One experiment with its report: per-variant figures with 95% intervals and rankings."""

    @extend_schema(
        responses={200: ExperimentReportOutputSerializer, 403: STAFF_ONLY},
        operation_id="experiments_detail",
    )
    def get(self, request: Request, experiment_id: int) -> Response:
        _staff_only(request)
        experiment = Experiment.objects.filter(pk=experiment_id).first()
        if experiment is None:
            raise Http404("No such experiment.")
        return Response(ExperimentReportOutputSerializer(experiment).data)
