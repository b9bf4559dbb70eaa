"""The generation API: one view per operation, each a thin layer over selectors and services."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from django.http import Http404, HttpResponse, HttpResponseBase
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from coursegen.drf import ErrorOutputSerializer, FieldErrorsOutputSerializer, LimitOffsetPagination
from coursegen.openapi import bad_request, error
from generation import events, exports, idempotency, recovery, regeneration, safety, services
from generation.models import (
    CourseEvaluation,
    CourseGenerationJob,
    GenerationTask,
    IdempotencyKey,
    JobStatus,
)
from generation.providers import ModerationResult, ProviderError
from generation.rubric import HUMAN_EVALUATOR
from generation.selectors import (
    course_job_visible,
    job_get_visible,
    job_progress_visible,
    job_status_visible,
    jobs_visible_to,
    withheld_lesson_keys,
)
from generation.serializers import (
    ContentFlaggedOutputSerializer,
    CourseHeldOutputSerializer,
    CourseNotReadyOutputSerializer,
    EvaluationOutputSerializer,
    JobDetailOutputSerializer,
    JobOutputSerializer,
    JobProgressOutputSerializer,
    JobSubmitInputSerializer,
    TaskRegenerateInputSerializer,
    TaskRegenerateOutputSerializer,
    TaskStatusSerializer,
    UnknownExportFormatOutputSerializer,
)
from ratelimits.apis import payment_required, too_large, too_many_requests
from ratelimits.budgets import BudgetExceeded
from ratelimits.serializers import (
    BudgetExceededOutputSerializer,
    RateLimitExceededOutputSerializer,
    RequestTooLargeOutputSerializer,
)
from ratelimits.services import RateLimitExceeded, RequestTooLarge, violation_record

IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
    OpenApiParameter.HEADER,
    description="Retry-safe submit: the same key and body return the first response (24 h); "
    f"1 to {idempotency.MAX_KEY_LENGTH} characters (else 400, under Idempotency-Key).",
)
STATUS_FILTER = OpenApiParameter(
    "status", str, enum=list(JobStatus.values), description="Only jobs in this status."
)


def _idempotent(
    request: Request, key: str, submit: Callable[[IdempotencyKey], Response]
) -> Response:
    # Printable only: a NUL could not be stored (PostgreSQL text refuses it), a 500.
    if not key or len(key) > idempotency.MAX_KEY_LENGTH or not key.isprintable():
        return Response({"Idempotency-Key": ["must be 1 to 255 printable characters"]}, status=400)
    check = idempotency.idempotency_key_begin(
        user=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
        key=key,
        fingerprint=idempotency.request_fingerprint(request.data),
    )
    if check.verdict == idempotency.Verdict.MISMATCH:
        detail = "This Idempotency-Key was used with a different request body."
        return Response({"detail": detail}, status=422)
    if check.verdict == idempotency.Verdict.IN_FLIGHT:
        detail = "A request with this Idempotency-Key is still being processed; retry later."
        return Response({"detail": detail}, status=409)
    if check.verdict == idempotency.Verdict.REPLAY:
        return _replay(check.record)
    try:
        response = submit(check.record)
    except idempotency.KeyTakenOver:  # this request's job was rolled back: the retry's counts
        detail = "A retry with this Idempotency-Key took it over; its response is the one to use."
        return Response({"detail": detail}, status=409)
    except Exception:  # e.g. a 400 raised by the serializer: the client may retry with the key
        idempotency.idempotency_key_release(record=check.record)
        raise
    if response.status_code == 201:
        body = json.loads(JSONRenderer().render(response.data))
        idempotency.idempotency_key_complete(record=check.record, status=201, body=body)
    else:
        idempotency.idempotency_key_release(record=check.record)
    return response


def _replay(record: IdempotencyKey) -> Response:
    headers = {"Idempotent-Replayed": "true"}
    if record.response_body is not None:
        return Response(record.response_body, status=record.response_status, headers=headers)
    # The first request created the job but died before storing its response.
    job = CourseGenerationJob.objects.get(pk=str(record.job_id))
    return Response(JobDetailOutputSerializer(job).data, status=201, headers=headers)


def _moderate(
    request: Request, texts: dict[str, str], *, organisation_id: UUID | None = None
) -> tuple[Response | None, ModerationResult | None]:
    """Moderate a request's free text before admission: (a refusal, None) when flagged (422)
    or when moderation is unavailable (503); else (None, the verdict)."""
    try:
        verdict = safety.request_moderate(
            user=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
            texts=texts,
            organisation_id=organisation_id,
        )
    except safety.ContentFlagged as exc:
        return Response(exc.as_body(), status=422), None
    except ProviderError:
        detail = "Content moderation is unavailable; the request was not accepted. Retry later."
        body = {"detail": detail, "code": "moderation_unavailable"}
        return Response(body, status=503, headers={"Retry-After": "30"}), None
    return None, verdict


def _visible_job(request: Request, job_id: UUID) -> CourseGenerationJob:
    job = job_get_visible(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("No such job.")
    return job


TOO_LARGE = "larger than the role's task budget allows in a whole window (code request_too_large)"
RATE_LIMITED = OpenApiResponse(
    RateLimitExceededOutputSerializer,
    description="Over one of the role's limits (job admission), or the request throttle "
    "(window requests); Retry-After says when to retry",
)
BUDGET_EXCEEDED = OpenApiResponse(
    BudgetExceededOutputSerializer,
    description="The organisation's monthly budget would be exceeded (code budget_exceeded); "
    "nothing was changed; Retry-After until it resets",
)
MODERATION_UNAVAILABLE = error("Content moderation unavailable; retry later (Retry-After)")
RECOVER_RESPONSES: dict[int, Any] = {
    200: JobDetailOutputSerializer,
    400: OpenApiResponse(RequestTooLargeOutputSerializer, description=f"The resume is {TOO_LARGE}"),
    402: BUDGET_EXCEEDED,
    409: error("The job or task is not failed"),
    429: RATE_LIMITED,
}


class JobCollectionApi(APIView):
    """GET lists the jobs the caller may see, newest first, a page at a time; POST submits a
    new course request."""

    pagination_class = LimitOffsetPagination  # also how the schema knows the list is paginated

    @extend_schema(
        parameters=[STATUS_FILTER],
        responses={
            200: JobOutputSerializer(many=True),
            400: OpenApiResponse(FieldErrorsOutputSerializer, description="Not a job status"),
        },
        operation_id="jobs_list",
    )
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        # The list shows neither the outline nor the course: those documents stay in the database.
        jobs = jobs_visible_to(user=request.user).defer("outline", "course").order_by("-created_at")
        status_filter = request.query_params.get("status")
        if status_filter:
            if status_filter not in JobStatus.values:
                return Response({"status": [f"must be one of {', '.join(JobStatus.values)}"]}, 400)
            jobs = jobs.filter(status=status_filter)
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobOutputSerializer(page, many=True).data)

    @extend_schema(
        request=JobSubmitInputSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={
            201: JobDetailOutputSerializer,
            400: bad_request(
                RequestTooLargeOutputSerializer,
                description="Field errors (an Idempotency-Key out of bounds among them); a "
                f"body that is not valid JSON (detail); or a job {TOO_LARGE}",
            ),
            402: BUDGET_EXCEEDED,
            403: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="SubmitForbidden",
                    serializers=[FieldErrorsOutputSerializer, ErrorOutputSerializer],
                    resource_type_field_name=None,
                ),
                description='"urgency": "batch" is not allowed for the caller\'s role '
                "(COURSEGEN_BATCH_ROLES), the error under urgency; or CSRF failed (detail)",
            ),
            409: error("A request with this Idempotency-Key is in flight"),
            422: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="SubmitUnprocessable",
                    serializers=[ContentFlaggedOutputSerializer, ErrorOutputSerializer],
                    resource_type_field_name=None,
                ),
                description="Flagged by content moderation (code content_flagged, with the "
                "categories and fields); or an Idempotency-Key reused with a different body "
                "(detail only)",
            ),
            429: RATE_LIMITED,
            503: MODERATION_UNAVAILABLE,
        },
        operation_id="jobs_submit",
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return self._submit(request, None)
        return _idempotent(request, key, lambda record: self._submit(request, record))

    def _submit(self, request: Request, record: IdempotencyKey | None) -> Response:
        serializer = JobSubmitInputSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        course_request = data["course_request"]
        refused, verdict = _moderate(
            request,
            {f: getattr(course_request, f) for f in ("topic", "audience", "instructions")},
            organisation_id=data["base_class"].organisation_id,
        )
        if refused is not None:
            return refused
        try:
            job = services.job_submit(
                user=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
                base_class=data["base_class"],
                request=course_request,
                idempotency_key=record,
                moderation=verdict,
                urgency=data["urgency"],
            )
        except services.UrgencyNotAllowedError as exc:
            return Response({"urgency": [str(exc)]}, status=status.HTTP_403_FORBIDDEN)
        except services.GenerationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        except RateLimitExceeded as exc:
            violation_record(user=request.user, exceeded=exc)  # type: ignore[arg-type]
            return too_many_requests(exc)
        except BudgetExceeded as exc:
            return payment_required(exc)
        except RequestTooLarge as exc:
            return too_large(exc)
        # `job` is the row as inserted, its owner, queue entry and tasks in hand: no re-read.
        headers = {"Location": f"/api/jobs/{job.id}/"}
        return Response(JobDetailOutputSerializer(job).data, status=201, headers=headers)


class JobDetailApi(APIView):
    @extend_schema(responses=JobDetailOutputSerializer, operation_id="jobs_detail")
    def get(self, request: Request, job_id: UUID) -> Response:
        job = job_status_visible(
            user=request.user, job_id=job_id, task_fields=TaskStatusSerializer.Meta.fields
        )
        if job is None:
            raise Http404("No such job.")
        return Response(JobDetailOutputSerializer(job).data)


class JobProgressApi(APIView):
    """The cheap poll: status, progress and queue position, without the 43 task rows."""

    @extend_schema(responses=JobProgressOutputSerializer, operation_id="jobs_progress")
    def get(self, request: Request, job_id: UUID) -> Response:
        job = job_progress_visible(user=request.user, job_id=job_id)
        if job is None:
            raise Http404("No such job.")
        return Response(JobProgressOutputSerializer(job).data)


class _JsonErrors(DefaultContentNegotiation):
    """JSON for every answer but the stream itself: a client that accepts only
    text/event-stream still gets its 401/404/429 body (a StreamingHttpResponse sets its own
    content type), never a 406."""

    def select_renderer(
        self,
        request: Request,
        renderers: Iterable[BaseRenderer],
        format_suffix: str | None = None,
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, str(renderer.media_type)


class JobEventsApi(APIView):
    """The push alternative to polling progress: server-sent events (generation/events.py)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = _JsonErrors

    @extend_schema(
        operation_id="jobs_events",
        responses={
            (200, events.CONTENT_TYPE): OpenApiResponse(
                events.EVENT_SCHEMA,
                description="A stream of server-sent events, `event: progress` with the body of "
                "GET /api/jobs/{job_id}/progress/ as JSON on its `data:` line: one at once, "
                "then one whenever that changes; the stream ends after the job's terminal "
                "status (succeeded, failed, cancelled) or after COURSEGEN_EVENTS_MAX_S, when "
                "the client reconnects. Lines starting with ':' are keep-alive comments.",
            ),
        },
    )
    def get(self, request: Request, job_id: UUID) -> HttpResponseBase:
        job = job_progress_visible(user=request.user, job_id=job_id)
        if job is None:
            raise Http404("No such job.")
        first = JobProgressOutputSerializer(job).data
        return events.progress_stream(job_id=job.pk, first=first, head=request.method == "HEAD")


class JobCourseApi(APIView):
    @extend_schema(
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="The assembled course"),
            409: OpenApiResponse(CourseNotReadyOutputSerializer, description="Not ready"),
        },
        operation_id="jobs_course",
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        job = _visible_job(request, job_id)
        if job.course is None:
            return Response(
                {
                    "detail": f"The course is not ready: the job is {job.status}.",
                    "status": job.status,
                },
                status=status.HTTP_409_CONFLICT,
            )
        return Response(job.course)


class JobExportApi(APIView):
    """The course as a file: md, html, pdf, qti (QTI 2.1 package) or scorm (SCORM 1.2 package).
    Built from the current version of every task, so it follows regenerations."""

    # A client that asks for the file's own type (Accept: application/pdf) gets the file, and
    # JSON for a 401/404/409: DRF's negotiation answered 406 before the view ran.
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _JsonErrors

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "export_format", str, OpenApiParameter.PATH, enum=list(exports.FORMATS)
            )
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            404: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="ExportNotFound",
                    serializers=[ErrorOutputSerializer, UnknownExportFormatOutputSerializer],
                    resource_type_field_name=None,
                ),
                description="No such job (detail), or no such format (with the formats)",
            ),
            409: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="ExportConflict",
                    serializers=[CourseNotReadyOutputSerializer, CourseHeldOutputSerializer],
                    resource_type_field_name=None,
                ),
                description="The course is not ready, or part of it is held for content "
                "review (code content_held)",
            ),
        },
        operation_id="jobs_export",
    )
    def get(self, request: Request, job_id: UUID, export_format: str) -> HttpResponse | Response:
        job = course_job_visible(user=request.user, job_id=job_id)
        if job is None:
            raise Http404("No such job.")
        try:
            export = exports.course_export(
                job=job,
                export_format_name=export_format,
                by=request.user,  # type: ignore[arg-type]
            )
        except exports.UnknownFormat as exc:
            return Response({"detail": str(exc), "formats": list(exports.FORMATS)}, status=404)
        except exports.CourseNotReady as exc:
            return Response({"detail": str(exc), "status": exc.status}, status=409)
        except exports.CourseHeld as exc:
            body = {"detail": str(exc), "code": "content_held", "held": list(exc.held)}
            return Response(body, status=409)
        response = HttpResponse(export.content, content_type=export.content_type)
        response["Content-Disposition"] = content_disposition_header(True, export.filename)
        response["Cache-Control"] = "private, no-store"
        return response


class JobEvaluationsApi(APIView):
    """The course's machine evaluations, newest first: the heuristic's at finalize and after each
    regeneration, the LLM judge's per lesson (task_key; details has the verdict with its 1-5
    scores, justifications and evidence) and for the course. Teachers' ratings: /feedback/."""

    @extend_schema(responses=EvaluationOutputSerializer(many=True), operation_id="jobs_evaluations")
    def get(self, request: Request, job_id: UUID) -> Response:
        # Only whether the job is visible: its course and outline documents stay in the database.
        if not jobs_visible_to(user=request.user).filter(pk=job_id).exists():
            raise Http404("No such job.")
        evaluations = (
            CourseEvaluation.objects.filter(job_id=job_id)
            .exclude(evaluator=HUMAN_EVALUATOR)
            .select_related("task")
        )
        context = {"withheld_lessons": withheld_lesson_keys(job_id=job_id)}
        return Response(EvaluationOutputSerializer(evaluations, many=True, context=context).data)


class JobCancelApi(APIView):
    @extend_schema(
        request=None,
        responses={
            200: JobDetailOutputSerializer,
            409: error("Already ended"),
        },
        operation_id="jobs_cancel",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = _visible_job(request, job_id)
        try:
            job = services.job_cancel(job_id=job.id, reason=f"cancelled by {request.user}")
        except services.GenerationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(JobDetailOutputSerializer(job).data)


class JobResumeApi(APIView):
    """Retry every failed task of a failed job (owner or the organisation's teachers/admins)."""

    @extend_schema(
        request=None,
        responses=RECOVER_RESPONSES,
        operation_id="jobs_resume",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = _visible_job(request, job_id)
        return _recover(request, job, task_ids=None)


class TaskRetryApi(APIView):
    """Retry one failed task of a failed job."""

    @extend_schema(
        request=None,
        responses=RECOVER_RESPONSES,
        operation_id="jobs_task_retry",
    )
    def post(self, request: Request, job_id: UUID, task_id: int) -> Response:
        job = _visible_job(request, job_id)
        if not job.tasks.filter(pk=task_id).exists():
            raise Http404("No such task in this job.")
        return _recover(request, job, task_ids=[task_id])


def _recover(request: Request, job: CourseGenerationJob, *, task_ids: list[int] | None) -> Response:
    try:
        recovery.job_resume(
            job_id=job.id,
            task_ids=task_ids,
            by=str(request.user),
            user=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
        )
    except services.GenerationError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    except RateLimitExceeded as exc:
        violation_record(user=request.user, exceeded=exc)  # type: ignore[arg-type]
        return too_many_requests(exc)
    except BudgetExceeded as exc:
        return payment_required(exc)
    except RequestTooLarge as exc:
        return too_large(exc)
    job.refresh_from_db()
    return Response(JobDetailOutputSerializer(job).data)


class TaskRegenerateApi(APIView):
    """Regenerate one task of a finished course, optionally with an instruction. The previous
    output is kept as a version; the course re-assembles when the new one is ready."""

    @extend_schema(
        request=TaskRegenerateInputSerializer,
        responses={
            202: TaskRegenerateOutputSerializer,
            402: BUDGET_EXCEEDED,
            409: error("The task cannot be regenerated now"),
            422: OpenApiResponse(ContentFlaggedOutputSerializer, description="Flagged"),
            429: RATE_LIMITED,
            503: MODERATION_UNAVAILABLE,
        },
        operation_id="tasks_regenerate",
    )
    def post(self, request: Request, job_id: UUID, task_id: int) -> Response:
        job = _visible_job(request, job_id)
        task = GenerationTask.objects.filter(job=job, pk=task_id).first()
        if task is None:
            raise Http404("No such task.")
        serializer = TaskRegenerateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        refused, _ = _moderate(
            request,
            {"instruction": serializer.validated_data["instruction"]},
            organisation_id=job.organisation_id,
        )
        if refused is not None:
            return refused
        try:
            regeneration.task_regenerate_enqueue(
                task_id=task.pk,
                instruction=serializer.validated_data["instruction"],
                by=request.user,  # type: ignore[arg-type]  # IsAuthenticated ran
            )
        except services.GenerationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except RateLimitExceeded as exc:
            violation_record(user=request.user, exceeded=exc)  # type: ignore[arg-type]
            return too_many_requests(exc)
        except BudgetExceeded as exc:
            return payment_required(exc)
        task.refresh_from_db()  # with eager Celery (demo, tests) the new version is already there
        return Response(TaskRegenerateOutputSerializer(task).data, status=status.HTTP_202_ACCEPTED)
