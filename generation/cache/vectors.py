"""Where the similarity layer finds its nearest candidates (docs/cache.md#search-at-scale).

One interface, `nearest`, two ways behind it:

- **numpy** (the default wherever pgvector is missing, e.g. Debian's PostgreSQL, SQLite): load the
  newest COURSEGEN_CACHE_MAX_CANDIDATES candidates' float32 `embedding` bytes and take the
  cosine in numpy. Fine to about 100k entries; loading the rows dominates.
- **pgvector**: where migration 0016 found the extension, each entry's embedding is also a
  `vector` in `course_generation_cache_vectors` (CacheVector, an unmanaged model) with an HNSW
  index (cosine) per embedding size, and PostgreSQL returns the nearest candidates itself,
  under the same exact filters.

Both ways return the same thing, the best candidates with their cosine, for the same threshold
and guards afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.models.functions import Cast
from numpy.typing import NDArray
from pgvector.django import CosineDistance, VectorField

from generation.cache_models import CacheEntry, CacheVector

# database (host, port, name) -> the pgvector version when the vectors table exists, else None
_DETECTED: dict[tuple[str, str, str], str | None] = {}


@dataclass(frozen=True)
class Nearest:
    """The best candidates, best first: (entry id, cosine); how many were scored."""

    rows: list[tuple[int, float]]
    scored: int
    backend: str


def pgvector_version() -> str | None:
    """The pgvector version when this database has the cache's vectors table, else None.
    Asked once per process and database."""
    if connection.vendor != "postgresql":
        return None
    params = connection.settings_dict
    key = (str(params.get("HOST")), str(params.get("PORT")), str(params["NAME"]))
    if key not in _DETECTED:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT extversion FROM pg_extension"
                " WHERE extname = 'vector' AND to_regclass(%s) IS NOT NULL",
                [CacheVector._meta.db_table],
            )
            row = cursor.fetchone()
        _DETECTED[key] = str(row[0]) if row else None
    return _DETECTED[key]


def search_backend() -> str:
    """`pgvector` or `numpy`, from COURSEGEN_CACHE_SEARCH and what the database has."""
    mode = settings.COURSEGEN_CACHE_SEARCH
    if mode == "numpy":
        return "numpy"
    ready = pgvector_version() is not None
    if mode == "pgvector" and not ready:
        raise ImproperlyConfigured(
            "COURSEGEN_CACHE_SEARCH=pgvector, but the database has no "
            "course_generation_cache_vectors: run migrate on a PostgreSQL server with pgvector "
            "(docs/cache.md#search-at-scale)"
        )
    return "pgvector" if ready else "numpy"


def nearest(candidates: QuerySet[CacheEntry], query: NDArray[np.float32], *, limit: int) -> Nearest:
    """The `limit` candidates nearest to `query` (an L2-normalised row) by cosine."""
    if search_backend() == "pgvector":
        return _nearest_pgvector(candidates, query, limit)
    return _nearest_numpy(candidates, query, limit)


def _nearest_numpy(
    candidates: QuerySet[CacheEntry], query: NDArray[np.float32], limit: int
) -> Nearest:
    rows = list(
        candidates.order_by("-created_at").values_list("pk", "embedding")[
            : settings.COURSEGEN_CACHE_MAX_CANDIDATES
        ]
    )
    if not rows:
        return Nearest([], 0, "numpy")
    matrix = np.frombuffer(b"".join(bytes(e or b"") for _, e in rows), dtype=np.float32)
    scores = matrix.reshape(len(rows), -1) @ query
    order = np.argsort(-scores)[:limit]
    return Nearest([(rows[i][0], float(scores[i])) for i in order], len(rows), "numpy")


def nearest_queryset(candidates: QuerySet[CacheEntry], query: NDArray[np.float32]) -> QuerySet:
    """The candidates ordered by cosine distance to `query`, as (id, distance). The expression
    and the size condition are those of the HNSW index for the query's size, so PostgreSQL can
    use it."""
    dims = int(query.shape[0])
    embedding = Cast("vector__embedding", VectorField(dimensions=dims))
    return (
        candidates.filter(vector__dims=dims)
        .annotate(distance=CosineDistance(embedding, query))
        .order_by("distance")
        .values_list("pk", "distance")
    )


def _iterative_scan() -> bool:
    # pgvector 0.8 goes on through the index until `limit` rows pass the filters; before 0.8 an
    # index scan stopped after hnsw.ef_search rows, filtered or not.
    version = tuple(int(p) for p in (pgvector_version() or "0").split(".")[:2] if p.isdigit())
    return version >= (0, 8)


def _nearest_pgvector(
    candidates: QuerySet[CacheEntry], query: NDArray[np.float32], limit: int
) -> Nearest:
    with transaction.atomic():
        if _iterative_scan():
            with connection.cursor() as cursor:
                # relaxed: rows come nearly in order; they are sorted again below.
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        found = list(nearest_queryset(candidates, query)[:limit])
    rows = sorted(((pk, 1.0 - float(d)) for pk, d in found), key=lambda r: -r[1])
    return Nearest(rows, len(rows), "pgvector")


# --- Writing ----------------------------------------------------------------------------------
def vectors_store(rows: Iterable[tuple[int, bytes]]) -> None:
    """Copy entries' float32 embeddings into the vectors table, where it exists."""
    if pgvector_version() is None:
        return
    vectors = []
    for pk, data in rows:
        embedding = np.frombuffer(data, dtype=np.float32)
        vectors.append(CacheVector(entry_id=pk, dims=len(embedding), embedding=embedding))
    CacheVector.objects.bulk_create(
        vectors,
        update_conflicts=True,
        unique_fields=["entry"],
        update_fields=["dims", "embedding"],
    )
