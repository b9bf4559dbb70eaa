"""The content cache (course_generation_cache, docs/cache.md): exact keys over the normalised
request context, expiry and invalidation."""

from generation.cache.keys import CACHED_KINDS, audience_band, normalise, schema_hash
from generation.cache.purge import cache_purge, cache_purge_expired
from generation.cache.store import (
    CacheKey,
    cache_applies,
    cache_entry_store,
    cache_key_for,
    cache_lookup,
    output_quality,
)

__all__ = [
    "CACHED_KINDS",
    "CacheKey",
    "audience_band",
    "cache_applies",
    "cache_entry_store",
    "cache_key_for",
    "cache_lookup",
    "cache_purge",
    "cache_purge_expired",
    "normalise",
    "output_quality",
    "schema_hash",
]
