"""Deleting cache entries: expired or outdated ones (the beat task), or chosen ones
(`manage.py cache_purge`). Deletes go in batches of primary keys so no statement holds many
row locks for long."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from generation.cache import keys
from generation.cache_models import CacheEntry
from generation.prompts import prompt_versions


def outdated() -> Q:
    """Entries whose prompt version or output schema is no longer current: they never match."""
    current = Q()
    for kind in keys.CACHED_KINDS:
        current |= Q(
            kind=kind.value,
            prompt_version__in=prompt_versions(kind),
            schema_hash=keys.schema_hash(kind),
        )
    return ~current


def _delete_in_batches(rows: QuerySet[CacheEntry], batch: int) -> int:
    deleted = 0
    while True:
        ids = list(rows.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += CacheEntry.objects.filter(pk__in=ids).delete()[0]


def cache_purge_expired(*, batch: int | None = None) -> int:
    """Delete expired and outdated entries; the number deleted."""
    rows = CacheEntry.objects.filter(Q(expires_at__lte=timezone.now()) | outdated())
    return _delete_in_batches(rows, batch or settings.COURSEGEN_CACHE_PURGE_BATCH)


def cache_purge(
    *,
    everything: bool = False,
    kind: str | None = None,
    older_than_days: float | None = None,
    organisation_id: UUID | None = None,
    batch: int | None = None,
) -> int:
    """Delete the entries matching every criterion given (all of them with `everything`)."""
    criteria = Q()
    if kind:
        criteria &= Q(kind=kind)
    if older_than_days is not None:
        criteria &= Q(created_at__lt=timezone.now() - timedelta(days=older_than_days))
    if organisation_id is not None:
        criteria &= Q(organisation_id=organisation_id)
    if not everything and criteria == Q():
        raise ValueError("name what to purge (a kind, an age, an organisation) or everything")
    rows = CacheEntry.objects.filter(criteria)
    return _delete_in_batches(rows, batch or settings.COURSEGEN_CACHE_PURGE_BATCH)
