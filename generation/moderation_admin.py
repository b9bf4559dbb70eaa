"""Held content (docs/safety.md): generated output moderation flagged twice, kept out of its
course until staff release it, or reject it (a new version is then regenerated and moderated
again). Releasing and rejecting need the `generation.review_heldcontent` permission."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from generation import safety, services
from generation.models import MODERATION_REVIEWED, ModerationStatus
from generation.moderation import text_of
from generation.moderation_models import HeldContent

REVIEW_PERMISSION = "generation.review_heldcontent"


@admin.register(HeldContent)
class HeldContentAdmin(admin.ModelAdmin):
    organisation_path = "job__organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "kind",
        "key",
        "job_link",
        "organisation",
        "flagged_for",
        "moderation",
        "moderation_reviewed_by",
        "moderation_reviewed_at",
        "finished_at",
    ]
    list_filter = ["moderation", "kind", "job__organisation"]
    search_fields = ["job__id", "key"]
    list_select_related = ["job", "job__organisation", "moderation_reviewed_by"]
    readonly_fields = [
        "job_link",
        "kind",
        "key",
        "moderation",
        "flagged_for",
        "moderation_reviewed_by",
        "moderation_reviewed_at",
        "text",
    ]
    fields = [*readonly_fields]
    actions = ["release", "reject"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[HeldContent]:
        return super().get_queryset(request).filter(moderation__in=MODERATION_REVIEWED)

    @admin.display(description="job")
    def job_link(self, task: HeldContent) -> str:
        url = reverse("admin:generation_coursegenerationjob_change", args=[task.job_id])
        return format_html('<a href="{}">{}</a>', url, task.job.topic)

    @admin.display(description="organisation")
    def organisation(self, task: HeldContent) -> str:
        return str(task.job.organisation)

    @admin.display(description="flagged for")
    def flagged_for(self, task: HeldContent) -> str:
        return ", ".join(task.moderation_categories)

    @admin.display(description="output (as moderation read it)")
    def text(self, task: HeldContent) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', text_of(task.output))

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REVIEW_PERMISSION)

    @admin.action(description="Release into the course", permissions=["review"])
    def release(self, request: HttpRequest, queryset: QuerySet[HeldContent]) -> None:
        self._review(request, queryset, ModerationStatus.RELEASED)

    @admin.action(
        description="Reject (keep out; regenerate for a new version)", permissions=["review"]
    )
    def reject(self, request: HttpRequest, queryset: QuerySet[HeldContent]) -> None:
        self._review(request, queryset, ModerationStatus.REJECTED)

    def _review(
        self, request: HttpRequest, queryset: QuerySet[HeldContent], decision: ModerationStatus
    ) -> None:
        done = 0
        for task in queryset:
            try:
                safety.task_moderation_review(
                    task_id=task.pk,
                    decision=decision,
                    by=request.user,  # type: ignore[arg-type]  # staff only
                )
                done += 1
            except services.GenerationError as exc:
                self.message_user(request, f"{task}: {exc}", level=messages.WARNING)
        self.message_user(request, f"{decision.label}: {done} item(s).")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
