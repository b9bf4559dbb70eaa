"""Admin screens for jobs, tasks, attempts and the queue (the dashboard is monitoring's)."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import content_disposition_header

from accounts.selectors import is_organisation_admin
from generation import (
    cache_admin,
    exports,
    moderation_admin,  # noqa: F401  (registers the held-content admin)
    recovery,
    regeneration,
    services,
)
from generation.admin_base import ReadOnlyStackedInline, ReadOnlyTabularInline
from generation.batch_admin import job_batch_state
from generation.exports.archive import zip_files
from generation.models import (
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    GenerationTaskVersion,
    ProviderConstraint,
    QueueEntry,
    RegenerationRequest,
    RegenerationSource,
)
from generation.quality import feedback
from generation.quality_admin import JudgeRunInline, RatingInline
from generation.rubric import HUMAN_EVALUATOR
from ratelimits.budgets import BudgetExceeded, budget_refusal_record
from ratelimits.services import RateLimitExceeded, RequestTooLarge, violation_record

TASK_INLINE_FIELDS: tuple[str, ...] = (
    "kind",
    "key",
    "status",
    "moderation",
    "model",
    "attempts",
    "output_tokens",
    "cost_usd",
    "duration_ms",
    "error",
)


class TaskInline(ReadOnlyTabularInline):
    model = GenerationTask
    show_change_link = True
    fields = TASK_INLINE_FIELDS


EVALUATION_FIELDS: tuple[str, ...] = (
    "created_at",
    "evaluator",
    "task",
    "overall",
    "criteria",
    "feedback",
)


class EvaluationInline(ReadOnlyTabularInline):
    """The heuristic's and the judge's evaluations (teachers' ratings have their own inline)."""

    model = CourseEvaluation
    fields = EVALUATION_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[CourseEvaluation]:
        return super().get_queryset(request).exclude(evaluator=HUMAN_EVALUATOR)


@admin.register(CourseEvaluation)
class EvaluationAdmin(admin.ModelAdmin):
    """Evaluation scores across jobs: sort by `overall` to find the weakest courses."""

    organisation_path = "job__organisation"  # whose rows: accounts/tenancy.py
    list_display = ["job", "task", "overall", "evaluator", "rating", "rated_by", "created_at"]
    list_filter = ["evaluator", "rating", "created_at"]
    search_fields = ["job__id", "job__request__topic", "rated_by__username"]
    list_select_related = ["job", "task", "rated_by"]
    date_hierarchy = "created_at"
    readonly_fields = (
        "job",
        *EVALUATION_FIELDS,
        "details",
        "rated_by",
        "rating",
        "flags",
        "superseded_at",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[CourseEvaluation]:
        # The job column shows its topic and status, not its course and outline documents.
        evaluations = super().get_queryset(request).defer("job__course", "job__outline")
        return feedback.ratings_for_staff(user=request.user, evaluations=evaluations)  # type: ignore[arg-type]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # recorded by the evaluator at finalize

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the job's quality_score is the latest of these


def _formats() -> list[tuple[str, exports.ExportFormat]]:
    return list(exports.FORMATS.items())


def _export_action(name: str) -> Callable[..., HttpResponse | None]:
    def export(
        model_admin: JobAdmin, request: HttpRequest, queryset: QuerySet[CourseGenerationJob]
    ) -> HttpResponse | None:
        return model_admin.export_selected(request, queryset, name)

    export.__name__ = f"export_{name}"
    label = exports.FORMATS[name].label
    return admin.action(
        description=f"Export the selected courses as {label}", permissions=["view"]
    )(export)


def _download(content: bytes, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response


def _zip(files: list[tuple[CourseGenerationJob, exports.ExportFile]]) -> bytes:
    return zip_files(
        (f"{str(job.pk)[:8]}-{export.filename}", export.content) for job, export in files
    )


@admin.register(CourseGenerationJob)
class JobAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "topic",
        "status",
        "progress_bar",
        "priority",
        "urgency",
        "owner",
        "organisation",
        "cost_usd",
        "reask_share_display",
        "quality_score",
        "judge_score",
        "output_tokens",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "priority", "urgency", "organisation", "created_at"]
    search_fields = ["id", "correlation_id", "owner__username", "request__topic"]
    list_select_related = ["owner", "organisation"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "id",
        "batch_state",
        "course_links",
        "owner",
        "organisation",
        "base_class",
        "request",
        "status",
        "progress",
        "outline",
        "course",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "cost_usd",
        "reask_cost_usd",
        "reask_share_display",
        "judge_cost_usd",
        "quality_score",
        "judge_status",
        "judge_score",
        "correlation_id",
        "error",
        "chord_dispatched_at",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    ]
    fields = ["priority", "urgency", *readonly_fields]
    inlines = [EvaluationInline, RatingInline, JudgeRunInline, TaskInline]
    actions = ["cancel_jobs", "resume_jobs", *(_export_action(name) for name in exports.FORMATS)]

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        # The queue's order and the price are the platform's: an organisation's administrator
        # cannot move its jobs ahead of other organisations' (accounts/tenancy.py).
        if is_organisation_admin(request.user):
            return ["priority", "urgency", *self.readonly_fields]
        return list(self.readonly_fields)

    def save_model(
        self, request: HttpRequest, obj: CourseGenerationJob, form: object, change: bool
    ) -> None:
        # Only the priority and the urgency are editable; the priority moves the queue entry
        # too, and the urgency changes only while the job waits (docs/batch.md).
        services.job_set_priority(job_id=obj.id, priority=obj.priority)
        if "urgency" in getattr(form, "changed_data", ()):
            try:
                services.job_set_urgency(job_id=obj.id, urgency=obj.urgency)
            except services.GenerationError as exc:
                self.message_user(request, f"urgency not changed: {exc}", level=messages.ERROR)

    @admin.display(description="batch")
    def batch_state(self, job: CourseGenerationJob) -> str:
        return job_batch_state(job)

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, job: CourseGenerationJob) -> str:
        return format_html(
            '<progress value="{}" max="100"></progress> {}%', job.progress, job.progress
        )

    @admin.display(description="course")
    def course_links(self, job: CourseGenerationJob) -> str:
        if job.course is None:
            return "not ready"
        downloads = format_html_join(
            " · ",
            '<a href="{}" class="course-export" download>{}</a>',
            ((reverse("job-export", args=[job.pk, name]), f.label) for name, f in _formats()),
        )
        page = reverse("course-page", args=[job.pk])
        return format_html(
            '<a href="{}" id="course-page-link">Open the course page</a> · download: {}',
            page,
            downloads,
        )

    def export_selected(
        self, request: HttpRequest, queryset: QuerySet[CourseGenerationJob], name: str
    ) -> HttpResponse | None:
        files: list[tuple[CourseGenerationJob, exports.ExportFile]] = []
        for job in queryset.select_related("organisation", "base_class"):
            try:
                export = exports.course_export(job=job, export_format_name=name, by=request.user)  # type: ignore[arg-type]
            except exports.ExportError as exc:
                self.message_user(request, f"{job}: {exc}", level=messages.WARNING)
            else:
                files.append((job, export))
        if not files:
            return None
        if len(files) == 1:
            export = files[0][1]
            return _download(export.content, export.content_type, export.filename)
        return _download(_zip(files), "application/zip", f"courses-{name}.zip")

    @admin.display(description="re-ask share")
    def reask_share_display(self, job: CourseGenerationJob) -> str:
        return f"{job.reask_share:.1%}"

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[CourseGenerationJob]) -> None:
        cancelled = 0
        for job in queryset:
            try:
                services.job_cancel(job_id=job.id, reason=f"cancelled by staff {request.user}")
                cancelled += 1
            except services.GenerationError as exc:
                self.message_user(request, f"{job}: {exc}", level=messages.WARNING)
        self.message_user(request, f"Cancelled {cancelled} job(s).")

    @admin.action(
        description="Resume the selected failed jobs (retry their failed tasks)",
        permissions=["change"],
    )
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[CourseGenerationJob]) -> None:
        _recover_each(self, request, [(job.id, None) for job in queryset])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are submitted through the API or generate_course


ATTEMPT_INLINE_FIELDS: tuple[str, ...] = (
    "number",
    "kind",
    "part",
    "outcome",
    "model",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "errors",
    "created_at",
)


def _recover_each(
    model_admin: admin.ModelAdmin, request: HttpRequest, work: list[tuple[UUID, list[int] | None]]
) -> None:
    resumed = 0
    for job_id, task_ids in work:
        try:
            recovery.job_resume(
                job_id=job_id,
                task_ids=task_ids,
                by=f"staff {request.user}",
                user=request.user,  # type: ignore[arg-type]  # staff only
            )
            resumed += 1
        except (services.GenerationError, RequestTooLarge) as exc:
            model_admin.message_user(request, f"job {job_id}: {exc}", level=messages.WARNING)
        except (RateLimitExceeded, BudgetExceeded) as exc:
            _refused(model_admin, request, f"job {job_id}", exc)
    model_admin.message_user(request, f"Resumed {resumed} job(s).")


def _refused(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    what: str,
    exc: RateLimitExceeded | BudgetExceeded,
) -> None:
    if isinstance(exc, BudgetExceeded):
        budget_refusal_record(exceeded=exc)
    else:
        violation_record(user=request.user, exceeded=exc)  # type: ignore[arg-type]  # staff only
    model_admin.message_user(request, f"{what}: {exc.detail}", level=messages.WARNING)


class AttemptInline(ReadOnlyTabularInline):
    model = GenerationAttempt
    fields = ATTEMPT_INLINE_FIELDS


VERSION_INLINE_FIELDS: tuple[str, ...] = (
    "number",
    "instruction",
    "created_by",
    "created_at",
    "model",
    "prompt_version",
    "output_tokens",
    "cost_usd",
    "output",
)


class VersionInline(ReadOnlyStackedInline):
    model = GenerationTaskVersion
    fields = VERSION_INLINE_FIELDS


REGENERATION_FIELDS: tuple[str, ...] = (
    "created_at",
    "source",
    "requested_by",
    "part",
    "instruction",
    "status",
    "version",
    "runs",
    "error",
    "finished_at",
)


class RegenerationInline(ReadOnlyTabularInline):
    model = RegenerationRequest
    fields = REGENERATION_FIELDS
    show_change_link = True


@admin.register(RegenerationRequest)
class RegenerationRequestAdmin(admin.ModelAdmin):
    """Every regeneration asked for, by whom, and how it went (a running one shows its
    worker and lease; the reconciler re-sends one whose worker died)."""

    organisation_path = "task__job__organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "pk",
        "task",
        "source",
        "requested_by",
        "status",
        "version",
        "runs",
        "worker",
        "lease_expires_at",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "source"]
    search_fields = ["task__job__id", "worker", "error", "instruction"]
    list_select_related = ["task", "requested_by"]
    readonly_fields = [f.name for f in RegenerationRequest._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(GenerationTask)
class TaskAdmin(admin.ModelAdmin):
    organisation_path = "job__organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "kind",
        "key",
        "status",
        "job",
        "model",
        "attempts",
        "runs",
        "output_tokens",
        "cost_usd",
        "reask_cost_usd",
        "duration_ms",
        "worker",
        "finished_at",
    ]
    list_filter = ["status", "kind", "model", "tier", "moderation"]
    search_fields = ["job__id", "key", "worker", "error"]
    list_select_related = ["job"]
    readonly_fields = [f.name for f in GenerationTask._meta.fields]
    inlines = [AttemptInline, VersionInline, RegenerationInline]
    actions = ["retry_tasks", "regenerate_tasks", cache_admin.report_wrong_content_of_tasks]

    @admin.action(description="Retry the selected failed tasks", permissions=["change"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[GenerationTask]) -> None:
        by_job: dict[UUID, list[int]] = {}
        for task in queryset:
            by_job.setdefault(task.job_id, []).append(task.pk)
        _recover_each(self, request, list(by_job.items()))

    @admin.action(
        description="Regenerate the selected tasks (previous output kept as a version)",
        permissions=["change"],
    )
    def regenerate_tasks(self, request: HttpRequest, queryset: QuerySet[GenerationTask]) -> None:
        started = 0
        for task in queryset:
            try:
                regeneration.task_regenerate_enqueue(
                    task_id=task.pk,
                    by=request.user,  # type: ignore[arg-type]  # staff only
                    source=RegenerationSource.ADMIN,
                )
                started += 1
            except services.GenerationError as exc:
                self.message_user(request, f"{task}: {exc}", level=messages.WARNING)
            except (RateLimitExceeded, BudgetExceeded) as exc:
                _refused(self, request, str(task), exc)
        self.message_user(request, f"Regenerating {started} task(s).")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(GenerationAttempt)
class AttemptAdmin(admin.ModelAdmin):
    # Whose rows (accounts/tenancy.py): a task's calls, or the judge's on a job.
    organisation_path = ("task__job__organisation", "judge_run__job__organisation")
    list_display = [
        "task",
        "judge_run",
        "number",
        "kind",
        "part",
        "outcome",
        "model",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        "created_at",
    ]
    list_filter = ["outcome", "kind", "model"]
    search_fields = ["task__job__id", "judge_run__job__id"]
    list_select_related = ["task", "judge_run"]
    readonly_fields = [f.name for f in GenerationAttempt._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ProviderConstraint)
class ProviderConstraintAdmin(admin.ModelAdmin):
    """What each OpenAI-compatible server accepted (the provider's constraint ladder). Deleting a
    row makes the next call climb the ladder again from json_schema (after a server upgrade)."""

    organisation_path = None  # platform-only (accounts/tenancy.py)
    list_display = ["base_url", "model", "step", "decided_at", "updated_at"]
    list_filter = ["step"]
    search_fields = ["base_url", "model"]
    readonly_fields = [f.name for f in ProviderConstraint._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(QueueEntry)
class QueueEntryAdmin(admin.ModelAdmin):
    organisation_path = "job__organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "job",
        "state",
        "priority",
        "enqueued_at",
        "claimed_at",
        "claimed_by",
        "finished_at",
    ]
    list_filter = ["state", "priority"]
    search_fields = ["job__id", "claimed_by"]
    list_select_related = ["job"]
    readonly_fields = ["job", "state", "enqueued_at", "claimed_at", "claimed_by", "finished_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
