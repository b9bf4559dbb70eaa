"""The Redis cache backend keeps one client object per connection pool."""

from __future__ import annotations

from typing import Any

import pytest
import redis
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


def test_incr_is_one_round_trip_that_keeps_the_expiry_and_never_creates_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = caches["default"]
    assert isinstance(cache, SharedClientRedisCache)
    key = "shared-client-incr"
    cache.delete(key)
    raw_key = cache.make_and_validate_key(key)
    client = cache._cache.get_client(write=True)
    sent: list[str] = []
    execute = client.execute_command

    def counting(*args: object, **options: object) -> object:
        sent.append(str(args[0]))
        return execute(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    with pytest.raises(ValueError):
        cache.incr(key)
    assert execute("EXISTS", raw_key) == 0  # a plain INCR would have made a key with no TTL
    cache.add(key, 5, timeout=30)
    sent.clear()
    assert cache.incr(key, 2) == 7
    assert sent in (["EVALSHA"], ["EVALSHA", "EVAL"])  # EVAL only if the script was flushed
    monkeypatch.undo()
    assert 0 < client.ttl(raw_key) <= 30
    assert cache.get(key) == 7
    cache.delete(key)


def test_more_threads_than_connections_wait_for_one_instead_of_failing(settings: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from coursegen.cache import redis_client

    options = {**settings.CACHES["default"]["OPTIONS"], "max_connections": 2}
    small = SharedClientRedisCache(settings.REDIS_URL, {"OPTIONS": options})
    small.set("pool-test", 0, timeout=30)

    def hammer(_: int) -> None:
        for _ in range(20):
            small.incr("pool-test")
            small.get("pool-test")

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(hammer, range(16)))  # a plain pool raises "Too many connections" here

    assert small.get("pool-test") == 16 * 20
    small.delete("pool-test")
    limiter_pool = redis_client(settings.REDIS_URL).connection_pool
    assert isinstance(limiter_pool, redis.BlockingConnectionPool)
    assert limiter_pool.max_connections == settings.REDIS_MAX_CONNECTIONS
