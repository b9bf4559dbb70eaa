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

Calls waiting for a permit stand in one line per model, a sorted set scored by their rank (lower
goes first), so when the limit binds permits go by priority, not to whoever asks first:
`rank = job submitted at + COURSEGEN_QUEUE_AGING_S * (job priority - progress credit)`, where the
credit is `COURSEGEN_PROVIDER_PROGRESS_STEPS * the job's share of tasks done` (a job far along
frees its slots sooner). It is priority with aging written as a virtual deadline: a LOW (8) job's
call ranks with an URGENT (0) one submitted eight aging intervals later, so low priority waits but
never starves, and a task deferred and re-sent keeps its place because its rank comes from its
job. A waiter is granted a permit only while fewer waiters rank ahead of it than there are free
slots; each poll renews its place (`WAITER_TTL_S`), so a waiter whose process died leaves the
line by itself.

The scripts run atomically in Redis with Redis's own clock, so any number of worker processes
and machines share one limit and one line. If Redis is unreachable the limiter fails open (calls
go out).
"""

from __future__ import annotations

import contextlib
import functools
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
from generation.breaker import CircuitBreaker, CircuitOpenError
from generation.models import Priority
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    PermanentProviderError,
    Provider,
    TransientProviderError,
)

logger = logging.getLogger("coursegen.concurrency")

# KEYS: holders (zset), state (hash), waiters (zset by rank), waiters' expiry (zset), and
# optionally the model's circuit breaker's open-until key (its `before_call` in the same round
# trip: while it exists the breaker decides, and no permit is taken).
# ARGV: token, lease_s, initial limit, ttl_s, rank, waiter_ttl_s (0: do not stand in line).
# Returns {1 if acquired (-1: the breaker is not closed), epoch, limit, in flight, waiters
# ranked ahead}.
_ACQUIRE = """
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {-1, 0, '0', 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 200)
for _, token in ipairs(gone) do
  redis.call('ZREM', KEYS[3], token)
  redis.call('ZREM', KEYS[4], token)
end
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit'))
if not limit then
  limit = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'limit', limit, 'epoch', 0)
end
local epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch')) or 0
local inflight = redis.call('ZCARD', KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local free = math.max(1, math.floor(limit)) - inflight
local ahead = 0
if free > 0 then
  ahead = redis.call('ZCOUNT', KEYS[3], '-inf', '(' .. ARGV[5])
end
if free > 0 and ahead < free then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {1, epoch, tostring(limit), inflight + 1, ahead}
end
if tonumber(ARGV[6]) <= 0 then
  return {0, epoch, tostring(limit), inflight, ahead}
end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
ahead = redis.call('ZRANK', KEYS[3], ARGV[1])
return {0, epoch, tostring(limit), inflight, ahead}
"""

# KEYS: waiters, waiters' expiry. ARGV: token. A waiter that gave up leaves the line.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: holders, state, and optionally a circuit breaker's outcome bucket to count the call in
# (its `record_success` in the same round trip). ARGV: token, signal (ok|throttle|neutral),
# permit epoch, increase, decrease factor, min, max, initial, the bucket's ttl. Returns the new
# limit.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if KEYS[3] then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
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


class GateClosed(Exception):
    """The breaker's open-until key exists: the breaker itself decides whether the call goes."""


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


WAITER_TTL_S = 5  # a waiter that has not asked again for this long has left the line
LINE_FAR = 32  # waiters further back than this poll at half the rate


def call_rank(*, priority: int, submitted_at: float, done_share: float = 0.0) -> float:
    """A call's place in line (lower goes first): its job's priority with aging, as a virtual
    deadline on the job's submission time (epoch seconds), less the progress credit."""
    credit = settings.COURSEGEN_PROVIDER_PROGRESS_STEPS * min(max(done_share, 0.0), 1.0)
    return submitted_at + settings.COURSEGEN_QUEUE_AGING_S * (priority - credit)


def default_rank() -> float:
    """The rank of a call that names no job: a NORMAL job's, submitted now."""
    return call_rank(priority=int(Priority.NORMAL), submitted_at=time.time())


@dataclass(frozen=True)
class Permit:
    token: str
    epoch: int


class ConcurrencyLimiter:
    """The shared AIMD semaphore of one model, with its line of waiting calls."""

    def __init__(self, model: str, client: redis.Redis, config: LimiterConfig | None = None):
        self.model = model
        self.config = config or LimiterConfig.from_settings()
        self._client = client
        self._keys = [f"coursegen:cc:{model}:holders", f"coursegen:cc:{model}:state"]
        self._line = [f"coursegen:cc:{model}:waiters", f"coursegen:cc:{model}:waiters-ttl"]
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._leave = client.register_script(_LEAVE)

    def try_acquire(self, *, rank: float | None = None, token: str | None = None) -> Permit | None:
        """A permit now, or None. With a `token`, a call refused stands in line at `rank`
        (default: a NORMAL call arriving now) until it asks again with that token or `leave`s;
        without one it is a one-off try."""
        rank = default_rank() if rank is None else rank
        permit, _ = self._try(token or uuid.uuid4().hex, rank, wait=token is not None)
        return permit

    def _try(
        self, token: str, rank: float, *, wait: bool = True, gate: str | None = None
    ) -> tuple[Permit | None, int]:
        """(the permit or None, how many waiters rank ahead). With a `gate` key (a breaker's
        open-until), GateClosed when it exists: no permit is taken and the call is not in line."""
        ttl = int(max(self.config.lease_s * 4, 3600))
        args: list[str | float] = [token, self.config.lease_s, self.config.initial, ttl]
        args += [f"{rank:.6f}", WAITER_TTL_S if wait else 0]
        keys = [*self._keys, *self._line, *([gate] if gate else [])]
        got, epoch, _, _, ahead = self._acquire(keys=keys, args=args)
        if int(got) < 0:
            raise GateClosed
        return (Permit(token, int(epoch)) if got else None), int(ahead)

    def leave(self, token: str) -> None:
        self._leave(keys=self._line, args=[token])

    def acquire(
        self, *, timeout: float, rank: float | None = None, gate: str | None = None
    ) -> Permit:
        """Wait up to `timeout` seconds for a permit, in line at `rank`; ProviderBusyError
        when none frees (the call leaves the line). With a `gate` key, GateClosed as soon as it
        exists (see `_try`)."""
        started = time.monotonic()
        token, rank = uuid.uuid4().hex, default_rank() if rank is None else rank
        pause = 0.01
        try:
            while True:
                permit, ahead = self._try(token, rank, gate=gate)
                if permit is not None:
                    return permit
                waited = time.monotonic() - started
                if waited + pause > timeout:
                    raise ProviderBusyError(self.model, waited, retry_after=max(pause * 4, 1.0))
                # Jitter: waiters do not poll in step. Far back in line, poll less often.
                time.sleep(pause * (0.5 + random.random()) * (2 if ahead > LINE_FAR else 1))
                pause = min(pause * 2, 0.25)
        except BaseException:
            self._leave_quietly(token)
            raise

    def _leave_quietly(self, token: str) -> None:
        with contextlib.suppress(redis.RedisError):  # else the place expires with WAITER_TTL_S
            self.leave(token)

    def release(
        self, permit: Permit, *, signal: str, count: tuple[str, int] | None = None
    ) -> float:
        """Give the permit back; `signal` is ok (increase), throttle (decrease) or neutral.
        `count`: a counter key and its ttl, incremented in the same round trip (a breaker's
        outcome bucket)."""
        c = self.config
        args: list[str | float] = [
            permit.token,
            signal,
            permit.epoch,
            c.increase,
            c.decrease,
            c.minimum,
            c.maximum,
            c.initial,
        ]
        keys = self._keys
        if count is not None:
            keys, args = [*keys, count[0]], [*args, count[1]]
        limit = self._release(keys=keys, args=args)
        return float(limit)

    def state(self) -> dict[str, float]:
        raw = self._client.hgetall(self._keys[1])
        limit = float(raw.get(b"limit", self.config.initial))
        now = self._client.time()
        in_flight = self._client.zcount(self._keys[0], now[0] + now[1] / 1e6, "+inf")
        waiting = self._client.zcard(self._line[0])
        return {
            "limit": limit,
            "in_flight": float(in_flight),
            "epoch": float(raw.get(b"epoch", 0)),
            "waiting": float(waiting),
        }


def limiter_for(model: str) -> ConcurrencyLimiter | None:
    """The model's limiter, or None when it is off or no shared store (REDIS_URL) is configured."""
    if not settings.COURSEGEN_CONCURRENCY_ENABLED or not settings.REDIS_URL:
        return None
    return _limiter(model, redis_client(settings.REDIS_URL), LimiterConfig.from_settings())


@functools.lru_cache(maxsize=64)
def _limiter(model: str, client: redis.Redis, config: LimiterConfig) -> ConcurrencyLimiter:
    # Built once per model, client and settings: registering its three scripts (a SHA-1 of each)
    # on every provider call was ~1 % of a worker's CPU. It holds no per-call state.
    return ConcurrencyLimiter(model, client, config)


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


def call_limited(
    provider: Provider,
    request: CompletionRequest,
    *,
    rank: float | None = None,
    paced: bool = False,
    breaker: CircuitBreaker | None = None,
) -> Completion:
    """`provider.complete(request)` under the model's concurrency limit, waiting in line at
    `rank` (`call_rank`; None: a NORMAL call arriving now) when it binds (see the module doc).
    `paced`: generation/pacer.py spends the provider's limit for this model, so its 429s and
    low remaining are the pacer's to answer and do not shrink the limit here.

    With a `breaker`, the call also goes through it: CircuitOpenError before any permit is taken
    while it is open, and the outcome counted (a transient error is a failure; an answer, even an
    invalid or refused one, a success). When the breaker's store is the limiter's Redis, its
    check rides on the acquire script and a success's count on the release script: two round
    trips a call instead of four."""
    limiter = limiter_for(request.model)
    probe = False
    permit = None
    if limiter is not None:
        permit, probe = _acquire(limiter, request.model, rank, breaker)
    elif breaker is not None:
        probe = breaker.before_call()
    signal, succeeded = "neutral", None  # succeeded: the breaker's outcome (None: not counted)
    try:
        completion = provider.complete(request)
        if limiter is not None:
            low = not paced and runs_low(completion.headers, limiter.config.low_remaining)
            signal = "throttle" if low else "ok"
        succeeded = True
        return completion
    except TransientProviderError as exc:
        signal = "throttle" if exc.status_code == 429 and not paced else "neutral"
        succeeded = False
        raise
    except (InvalidOutputError, PermanentProviderError):  # the provider answered: it is up
        succeeded = True
        raise
    finally:
        _settle(limiter, permit, signal, breaker, succeeded, probe)


def _settle(
    limiter: ConcurrencyLimiter | None,
    permit: Permit | None,
    signal: str,
    breaker: CircuitBreaker | None,
    succeeded: bool | None,
    probe: bool,
) -> None:
    """Give the permit back and count the breaker's outcome, in one round trip when they can."""
    count = None
    if breaker is not None and succeeded and not probe:
        count = breaker.shared_count_key("ok")
    released = False
    if limiter is not None and permit is not None:
        released = _release(limiter, permit, signal, count)
    if breaker is None or succeeded is None or (released and count is not None):
        return
    if succeeded:
        breaker.record_success(probe=probe)
    else:
        breaker.record_failure(probe=probe)


def _acquire(
    limiter: ConcurrencyLimiter, model: str, rank: float | None, breaker: CircuitBreaker | None
) -> tuple[Permit | None, bool]:
    """A permit (None: the limiter failed open) and whether the call is the breaker's probe."""
    gate = breaker.shared_key("open_until") if breaker is not None else None
    probe = False
    if breaker is not None and gate is None:
        probe = breaker.before_call()
    try:
        try:
            return limiter.acquire(timeout=limiter.config.wait_s, rank=rank, gate=gate), probe
        except GateClosed:
            assert breaker is not None
            probe = breaker.before_call()  # CircuitOpenError, or this call is the probe
            return limiter.acquire(timeout=limiter.config.wait_s, rank=rank), probe
    except redis.RedisError as exc:
        logger.warning("concurrency limiter for %s unavailable (%s); failing open", model, exc)
        if breaker is not None and gate is not None and not probe:
            probe = breaker.before_call()  # fails open too if its store is the same Redis
        return None, probe


def _release(
    limiter: ConcurrencyLimiter, permit: Permit, signal: str, count: tuple[str, int] | None = None
) -> bool:
    """Whether the permit went back (with `count` counted, if any)."""
    try:
        limit = limiter.release(permit, signal=signal, count=count)
    except redis.RedisError as exc:  # the permit expires with its lease
        logger.warning("could not release a %s permit (%s)", limiter.model, exc)
        return False
    if signal == "throttle":
        logger.info(
            "concurrency limit for %s now %.1f (provider pushed back)", limiter.model, limit
        )
    return True
