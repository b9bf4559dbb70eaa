"""False-hit reports: staff say a cached output was the wrong content for the task it served; the
entry is deleted (it is never served again) and the report stays (docs/cache.md#false-hits)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from generation.cache_models import CacheEntry, CacheFalseHit
from generation.models import GenerationTask
from monitoring.logs import log_event
from monitoring.models import CourseGenerationLog


def cache_entry_of_task(*, task: GenerationTask) -> int | None:
    """The id of the entry that served the task's latest cache hit, from its `cache.hit` log
    row; None when the task was generated."""
    hit = (
        CourseGenerationLog.objects.filter(task=task, event="cache.hit")
        .order_by("-created_at")
        .values_list("data", flat=True)
        .first()
    )
    entry_id = (hit or {}).get("entry_id")
    return int(entry_id) if entry_id is not None else None


@transaction.atomic
def cache_false_hit_report(
    *,
    entry_id: int,
    by: User | None,
    task: GenerationTask | None = None,
    note: str = "",
) -> CacheFalseHit | None:
    """Record the report and delete the entry; None when the entry is gone already (reported
    by someone else, or expired and purged)."""
    entry = CacheEntry.objects.select_for_update().filter(pk=entry_id).first()
    if entry is None:
        return None
    report = CacheFalseHit.objects.create(
        kind=entry.kind,
        key_hash=entry.key_hash,
        organisation_id=entry.organisation_id,
        context=entry.context,
        hits=entry.hits,
        reported_by=by,
        note=note or (f"served task {task.kind} {task.key} of job {task.job_id}" if task else ""),
    )
    entry.delete()
    log_event(
        "cache.false_hit",
        f"cache entry {entry_id} ({entry.kind}) reported as wrong content and deleted",
        level="warning",
        job=task.job if task else None,
        task=task,
        data={"entry_id": entry_id, "report_id": report.pk, "hits": entry.hits},
    )
    return report
