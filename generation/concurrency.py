"""Dynamic concurrency: a per-model limit on provider calls in flight, shared by every worker.

Each model has a semaphore in Redis: a sorted set of permit holders scored by lease expiry, and a
hash with the current limit and an epoch. A call takes a permit before it goes out and gives it
back when it returns; a worker killed mid-call never gives its permit back, so the permit expires
with its lease (`COURSEGEN_CONCURRENCY_LEASE_S`) and the slot frees itself.

The limit moves by AIMD, like TCP's congestion window:
* additive increase: every successful call adds `COURSEGEN_CONCURRENCY_INCREASE` (up to the max);
* multiplicative decrease: a 429, or `x-ratelimit-remaining-requests`/`-tokens` below
  `COURSEGEN_CONCURRENCY_LOW_REMAINING` of the provider's limit, multiplies it by
  `COURSEGEN_CONCURRENCY_DECREASE` (down to 1). Only calls that started after the last decrease can
  cause another (each permit carries the epoch it was taken in), so the many calls in flight when
  the provider pushes back halve the limit once, not once each.

Both scripts run atomically in Redis with Redis's own clock, so any number of worker processes
and machines share one limit. If Redis is unreachable the limiter fails open (calls go out).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from coursegen.cache import redis_client
from generation.breaker import CircuitOpenError
from generation.providers.base import (
    Completion,
    CompletionRequest,
    Provider,
    TransientProviderError,
)

logger = logging.getLogger("coursegen.concurrency")

# KEYS: holders (zset), state (hash). ARGV: token, lease_s, initial limit, ttl_s.
# Returns {1 if acquired, epoch, limit, in flight}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit'))
if not limit then
  limit = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'limit', limit, 'epoch', 0)
end
local epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch')) or 0
local inflight = redis.call('ZCARD', KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if inflight < math.max(1, math.floor(limit)) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {1, epoch, tostring(limit), inflight + 1}
end
return {0, epoch, tostring(limit), inflight}
"""

# KEYS: holders, state. ARGV: token, signal (ok|throttle|neutral), permit epoch, increase,
# decrease factor, min, max, initial. Returns the new limit.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or tonumber(ARGV[8])
local epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch')) or 0
if ARGV[2] == 'ok' then
  limit = math.min(tonumber(ARGV[7]), limit + tonumber(ARGV[4]))
elseif ARGV[2] == 'throttle' and tonumber(ARGV[3]) == epoch then
  limit = math.max(tonumber(ARGV[6]), limit * tonumber(ARGV[5]))
  epoch = epoch + 1
end
redis.call('HSET', KEYS[2], 'limit', limit, 'epoch', epoch)
return tostring(limit)
"""


class ProviderBusyError(CircuitOpenError):
    """No call slot for the model within the wait: the task is deferred, like an open breaker."""

    def __init__(self, model: str, waited_s: float, retry_after: float):
        Exception.__init__(
            self, f"no call slot for {model} after {waited_s:.1f}s (concurrency limit reached)"
        )
        self.model = model
        self.retry_after = retry_after


@dataclass(frozen=True)
class LimiterConfig:
    initial: float
    minimum: float
    maximum: float
    increase: float
    decrease: float
    low_remaining: float
    lease_s: float
    wait_s: float

    @classmethod
    def from_settings(cls) -> LimiterConfig:
        return cls(
            initial=settings.COURSEGEN_CONCURRENCY_INITIAL,
            minimum=1.0,
            maximum=settings.COURSEGEN_CONCURRENCY_MAX,
            increase=settings.COURSEGEN_CONCURRENCY_INCREASE,
            decrease=settings.COURSEGEN_CONCURRENCY_DECREASE,
            low_remaining=settings.COURSEGEN_CONCURRENCY_LOW_REMAINING,
            lease_s=settings.COURSEGEN_CONCURRENCY_LEASE_S,
            wait_s=settings.COURSEGEN_CONCURRENCY_WAIT_S,
        )


@dataclass(frozen=True)
class Permit:
    token: str
    epoch: int


class ConcurrencyLimiter:
    """The shared AIMD semaphore of one model."""

    def __init__(self, model: str, client: redis.Redis, config: LimiterConfig | None = None):
        self.model = model
        self.config = config or LimiterConfig.from_settings()
        self._client = client
        self._keys = [f"coursegen:cc:{model}:holders", f"coursegen:cc:{model}:state"]
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def try_acquire(self) -> Permit | None:
        token = uuid.uuid4().hex
        ttl = int(max(self.config.lease_s * 4, 3600))
        got, epoch, _, _ = self._acquire(
            keys=self._keys, args=[token, self.config.lease_s, self.config.initial, ttl]
        )
        return Permit(token, int(epoch)) if got else None

    def acquire(self, *, timeout: float) -> Permit:
        """Wait up to `timeout` seconds for a permit; ProviderBusyError when none frees."""
        started = time.monotonic()
        pause = 0.01
        while True:
            permit = self.try_acquire()
            if permit is not None:
                return permit
            waited = time.monotonic() - started
            if waited + pause > timeout:
                raise ProviderBusyError(self.model, waited, retry_after=max(pause * 4, 1.0))
            time.sleep(pause * (0.5 + random.random()))  # jitter: waiters do not poll in step
            pause = min(pause * 2, 0.25)

    def release(self, permit: Permit, *, signal: str) -> float:
        """Give the permit back; `signal` is ok (increase), throttle (decrease) or neutral."""
        c = self.config
        limit = self._release(
            keys=self._keys,
            args=[
                permit.token,
                signal,
                permit.epoch,
                c.increase,
                c.decrease,
                c.minimum,
                c.maximum,
                c.initial,
            ],
        )
        return float(limit)

    def state(self) -> dict[str, float]:
        raw = self._client.hgetall(self._keys[1])
        limit = float(raw.get(b"limit", self.config.initial))
        now = self._client.time()
        in_flight = self._client.zcount(self._keys[0], now[0] + now[1] / 1e6, "+inf")
        return {"limit": limit, "in_flight": float(in_flight), "epoch": float(raw.get(b"epoch", 0))}


def limiter_for(model: str) -> ConcurrencyLimiter | None:
    """The model's limiter, or None when it is off or no shared store (REDIS_URL) is configured."""
    if not settings.COURSEGEN_CONCURRENCY_ENABLED or not settings.REDIS_URL:
        return None
    return ConcurrencyLimiter(model, redis_client(settings.REDIS_URL))


def runs_low(headers: Mapping[str, str], fraction: float) -> bool:
    """True when the provider's remaining requests or tokens are below `fraction` of its limit."""
    for kind in ("requests", "tokens"):
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
        if remaining is None:
            continue
        if limit:
            if remaining < fraction * limit:
                return True
        elif remaining <= 0:
            return True
    return False


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def call_limited(provider: Provider, request: CompletionRequest) -> Completion:
    """`provider.complete(request)` under the model's concurrency limit (see the module doc)."""
    limiter = limiter_for(request.model)
    permit = _acquire(limiter, request.model) if limiter else None
    if limiter is None or permit is None:
        return provider.complete(request)
    signal = "neutral"
    try:
        completion = provider.complete(request)
        low = runs_low(completion.headers, limiter.config.low_remaining)
        signal = "throttle" if low else "ok"
        return completion
    except TransientProviderError as exc:
        signal = "throttle" if exc.status_code == 429 else "neutral"
        raise
    finally:
        _release(limiter, permit, signal)


def _acquire(limiter: ConcurrencyLimiter, model: str) -> Permit | None:
    try:
        return limiter.acquire(timeout=limiter.config.wait_s)
    except redis.RedisError as exc:
        logger.warning("concurrency limiter for %s unavailable (%s); failing open", model, exc)
        return None


def _release(limiter: ConcurrencyLimiter, permit: Permit, signal: str) -> None:
    try:
        limit = limiter.release(permit, signal=signal)
    except redis.RedisError as exc:  # the permit expires with its lease
        logger.warning("could not release a %s permit (%s)", limiter.model, exc)
        return
    if signal == "throttle":
        logger.info(
            "concurrency limit for %s now %.1f (provider pushed back)", limiter.model, limit
        )
