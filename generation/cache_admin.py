"""The content cache in the admin (docs/cache.md#in-the-admin): its entries, the false-hit
reports, and the staff action "Wrong content from cache" (on entries, and on tasks a hit served)
that deletes the entry and records the report."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.selectors import administered_organisation_ids, is_organisation_admin
from generation.cache import reports
from generation.cache_models import CacheEntry, CacheFalseHit
from generation.models import GenerationTask


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "kind",
        "embedded_text",
        "organisation",
        "level",
        "language",
        "audience_band",
        "hits",
        "quality",
        "cost_usd",
        "duration_ms",
        "created_at",
        "expires_at",
    ]
    list_filter = ["kind", "level", "language", "audience_band", "shared", "embedding_model"]
    search_fields = ["key_hash", "embedded_text", "organisation__slug"]
    list_select_related = ["organisation"]
    exclude = ["embedding"]
    actions = ["report_wrong_content"]

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in CacheEntry._meta.fields if f.name != "embedding"]

    @admin.action(
        description="Wrong content from cache: delete the entries and record it",
        permissions=["delete"],
    )
    def report_wrong_content(self, request: HttpRequest, queryset: QuerySet[CacheEntry]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        done = sum(
            reports.cache_false_hit_report(entry_id=pk, by=request.user) is not None  # type: ignore[arg-type]
            for pk in ids
        )
        self.message_user(request, f"Deleted {done} cache entr{'y' if done == 1 else 'ies'}.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(CacheFalseHit)
class CacheFalseHitAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = ["created_at", "kind", "organisation", "hits", "reported_by", "note"]
    list_filter = ["kind"]
    search_fields = ["key_hash", "note"]
    list_select_related = ["organisation", "reported_by"]

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in CacheFalseHit._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


def _may_delete_entry(request: HttpRequest, entry_id: int) -> bool:
    if not is_organisation_admin(request.user):
        return True
    mine = administered_organisation_ids(request.user)
    return CacheEntry.objects.filter(pk=entry_id, organisation_id__in=mine).exists()


@admin.action(
    description="Wrong content from cache: delete the entry that served it",
    permissions=["change"],  # on the tasks it is offered for
)
def report_wrong_content_of_tasks(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[GenerationTask]
) -> None:
    """For tasks a cache hit served (the Task admin's action): delete each one's entry and
    record the report; regenerate the task afterwards for new content."""
    done, none = 0, 0
    for task in queryset.select_related("job"):
        entry_id = reports.cache_entry_of_task(task=task)
        if entry_id is not None and not _may_delete_entry(request, entry_id):
            entry_id = None  # another organisation's shared entry: its operators decide
        report = (
            reports.cache_false_hit_report(entry_id=entry_id, by=request.user, task=task)  # type: ignore[arg-type]
            if entry_id is not None
            else None
        )
        done += report is not None
        none += report is None
    modeladmin.message_user(
        request,
        f"Deleted {done} cache entr{'y' if done == 1 else 'ies'}; regenerate the tasks for new "
        "content.",
    )
    if none:
        modeladmin.message_user(
            request,
            f"{none} task(s) were not served from the cache, or their entry is gone already.",
            level=messages.WARNING,
        )
