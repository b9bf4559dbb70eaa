"""The Batch API in the admin (docs/batch.md): batches with their state, counts and the jobs in
them, and each request's line. Rows written by the poller: read-only here."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from generation.admin_base import ReadOnlyTabularInline
from generation.batch_models import BATCH_REQUEST_OPEN, BatchRequestStatus
from generation.models import (
    BatchRequest,
    CourseGenerationJob,
    ProviderBatch,
)


class BatchRequestInline(ReadOnlyTabularInline):
    model = BatchRequest
    fields = (
        "custom_id",
        "task",
        "judge_run",
        "regeneration",
        "status",
        "error_code",
        "error",
        "answered_at",
        "finished_at",
    )


@admin.register(ProviderBatch)
class ProviderBatchAdmin(admin.ModelAdmin):
    organisation_path = None  # platform-only (accounts/tenancy.py)
    list_display = [
        "id",
        "provider_batch_id",
        "model",
        "status",
        "provider_status",
        "request_total",
        "request_completed",
        "request_failed",
        "created_at",
        "submitted_at",
        "ended_at",
    ]
    list_filter = ["status", "provider_status", "model", "provider"]
    search_fields = ["provider_batch_id", "requests__custom_id"]
    readonly_fields = [
        "jobs",
        *(f.name for f in ProviderBatch._meta.fields),
    ]
    inlines = [BatchRequestInline]

    @admin.display(description="jobs in this batch")
    def jobs(self, batch: ProviderBatch) -> str:
        jobs = CourseGenerationJob.objects.filter(tasks__batch_requests__batch=batch).distinct()
        return format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            (
                (reverse("admin:generation_coursegenerationjob_change", args=[job.pk]), job)
                for job in jobs
            ),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def job_batch_state(job: CourseGenerationJob) -> str:
    """What a job waits for in the Batch API: a batch job's task requests, and any job's judge
    runs and regenerations that went by batch (COURSEGEN_BATCH_JUDGE, _REGENERATIONS), queued
    for the next batch or at the provider."""
    waiting = BatchRequest.objects.filter(task__job=job, status__in=BATCH_REQUEST_OPEN)
    total = waiting.count()
    if not total:
        return "no request waiting for a batch" if job.urgency == "batch" else "-"
    queued = waiting.filter(status=BatchRequestStatus.QUEUED).count()
    judge = waiting.filter(judge_run__isnull=False).count()
    regenerations = waiting.filter(regeneration__isnull=False).count()
    return format_html(
        "<strong>waiting for batch</strong>: {} request(s) ({} of tasks, {} of the judge, {} "
        "regeneration(s)), {} queued for the next batch, {} at the provider",
        total,
        total - judge - regenerations,
        judge,
        regenerations,
        queued,
        total - queued,
    )
