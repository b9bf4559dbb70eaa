"""The content cache (course_generation_cache, docs/cache.md): exact keys over the normalised
request context, a similarity layer with guards, expiry and invalidation."""

from generation.cache.keys import CACHED_KINDS, audience_band, normalise, schema_hash
from generation.cache.purge import cache_purge, cache_purge_expired
from generation.cache.similar import Match
from generation.cache.store import (
    CacheKey,
    Found,
    cache_applies,
    cache_entry_put,
    cache_entry_store,
    cache_find,
    cache_key_for,
    cache_lookup,
    outline_key,
    output_quality,
)

__all__ = [
    "CACHED_KINDS",
    "CacheKey",
    "Found",
    "Match",
    "audience_band",
    "cache_applies",
    "cache_entry_put",
    "cache_entry_store",
    "cache_find",
    "cache_key_for",
    "cache_lookup",
    "cache_purge",
    "cache_purge_expired",
    "normalise",
    "outline_key",
    "output_quality",
    "schema_hash",
]
