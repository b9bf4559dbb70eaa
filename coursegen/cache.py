"""Django's Redis cache, with one client object per connection pool.

Django's `RedisCacheClient.get_client` builds a new `redis.Redis` for every operation, and each
one copies redis-py's table of ~200 response callbacks: in a worker's profile that was ~3 % of its
CPU (the circuit breaker and the dispatch flag touch the cache on every provider call and every
submit). `redis.Redis` objects are thread-safe and only wrap the pool, so one per pool is enough.

`redis_client(url)` is the one client per URL for code that talks to Redis directly (the
concurrency limiter, the offline simulator's rate limit).

`incr` is also one atomic script instead of EXISTS then INCR: the request throttle increments on
every API request, and between Django's two commands the key could expire, so the INCR would
recreate it without an expiry (a counter that never resets).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import redis
from django.conf import settings
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

# Django's incr contract: ValueError for a missing key, else the new value; the TTL is kept.
_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


class SharedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}
        self._clients_lock = threading.Lock()
        self._incr_script: Any = None

    def incr(self, key: Any, delta: int) -> int:
        client = self.get_client(key, write=True)
        if self._incr_script is None:  # the script object only holds its text and SHA1
            self._incr_script = client.register_script(_INCR_EXISTING)
        value = self._incr_script(keys=[key], args=[delta], client=client)  # EVALSHA, else EVAL
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return int(value)

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]  # no stubs
        client = self._clients.get(id(pool))
        if client is None:
            with self._clients_lock:
                client = self._clients.setdefault(
                    id(pool),
                    self._client(connection_pool=pool),  # type: ignore[attr-defined]
                )
        return client


class SharedClientRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SharedClientRedisCacheClient


@functools.cache
def redis_client(url: str) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=settings.REDIS_POOL_TIMEOUT_S,  # waiting for a free connection
        socket_timeout=5,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
