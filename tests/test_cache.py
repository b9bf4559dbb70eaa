"""The Redis cache backend keeps one client object per connection pool."""

from __future__ import annotations

from django.core.cache import caches

from coursegen.cache import SharedClientRedisCache


def test_it_reuses_one_client_and_still_works_as_a_cache() -> None:
    cache = caches["default"]
    assert isinstance(cache, SharedClientRedisCache)  # make test configures REDIS_URL

    client = cache._cache.get_client(write=True)
    assert cache._cache.get_client(write=True) is client
    assert cache._cache.get_client() is client  # one server: reads use the same pool

    cache.set("shared-client-test", {"n": 1}, timeout=30)
    assert cache.add("shared-client-test", "other", timeout=30) is False
    assert cache.get("shared-client-test") == {"n": 1}
    cache.add("shared-client-counter", 0, timeout=30)
    assert cache.incr("shared-client-counter") == 1
    cache.delete_many(["shared-client-test", "shared-client-counter"])
    assert cache.get("shared-client-test") is None
