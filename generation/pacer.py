"""Client-side pacing: we spend the provider's advertised requests and tokens per minute ourselves,
in rank order, so its limit is used fully and it has no reason to answer 429.

A provider tells its limits on every answer (`x-ratelimit-limit-requests`, `-tokens`). Each model
gets a pair of token buckets in Redis that refill at `COURSEGEN_PACER_SHARE` of those limits and
hold at most `COURSEGEN_PACER_BURST_S` seconds of it. A call takes one request before it goes out;
its tokens are charged when the reply says how many it used (so the token bucket may go below
zero, and the calls after it wait that much longer). The limits a process learned are written to
Redis only when they change, so pacing costs one round trip per call when the limit does not bind.

Calls waiting to be paced stand in one line per model, a sorted set scored by the same rank as
the concurrency limiter's (`generation.concurrency.call_rank`: the job's priority with aging, less
its progress credit), and a waiter is granted a request only while the bucket holds more requests
than there are waiters ranked ahead of it. Each refusal says how long until the waiter's turn
(its place in line over the refill rate), and the waiter sleeps that long, so the request it is
due goes out when it is refilled instead of at the next blind poll; a better-ranked call that
arrives meanwhile moves it back, and it sees so when it asks again. Each ask renews its place for
`WAITER_TTL_S`, so a waiter whose process died leaves the line by itself.

A 429 that gets through anyway (another client on the same key, a provider that counts
differently) empties the request bucket for the provider's Retry-After, so every waiter holds
back, in rank order, instead of each retrying on its own jittered clock. Until a model's limits
are known (no answer yet, or a provider that advertises none) calls are not paced, and a process
that was told so asks again only after UNPACED_RECHECK_S or a reply naming limits. If Redis is
unreachable the pacer fails open, like the concurrency limiter.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import redis
from django.conf import settings

from coursegen.cache import redis_client
from generation.concurrency import ProviderBusyError, default_rank
from generation.providers.base import Completion, TransientProviderError

logger = logging.getLogger("coursegen.pacer")

WAITER_TTL_S = 5.0  # a waiter that has not asked again for this long has left the line
MAX_SLEEP_S = 2.0  # a waiter asks again at least this often (its place expires after WAITER_TTL_S)
MIN_SLEEP_S = 0.002

# Refill both buckets to Redis's clock; `r` requests and `k` tokens, capped at burst_s of the rate.
_REFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'r', 'k', 'ts')
local share, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate_r = (tonumber(s[1]) or 0) * share / 60
local rate_k = (tonumber(s[2]) or 0) * share / 60
local elapsed = math.max(0, now - (tonumber(s[5]) or now))
local r, k = tonumber(s[3]) or 0, tonumber(s[4]) or 0
local cap_r, cap_k = math.max(1, rate_r * burst), math.max(1, rate_k * burst)
if r < cap_r then r = math.min(cap_r, r + elapsed * rate_r) end
if k < cap_k then k = math.min(cap_k, k + elapsed * rate_k) end
"""

# KEYS: state hash (rpm, tpm, r, k, ts), waiters (zset by rank), waiters' expiry (zset).
# ARGV: share, burst_s, token, rank, waiter_ttl_s, key ttl.
# Returns {1 if granted, seconds until this waiter's turn, waiters ranked ahead, grant number,
# now}.
_TAKE = (
    _REFILL
    + """
if rate_r <= 0 and rate_k <= 0 then return {1, '-1', 0, 0, '0'} end
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 200)
for _, w in ipairs(gone) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('ZREM', KEYS[3], w)
end
local ahead = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. ARGV[4])
local wait = 0
if rate_r > 0 and r < ahead + 1 then wait = (ahead + 1 - r) / rate_r end
if rate_k > 0 and k <= 0 then wait = math.max(wait, (1 - k) / rate_k) end
local granted = 0
if wait == 0 then
  if rate_r > 0 then r = r - 1 end
  granted = redis.call('HINCRBY', KEYS[1], 'g', 1)
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
redis.call('HSET', KEYS[1], 'r', r, 'k', k, 'ts', now)
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {wait == 0 and 1 or 0, tostring(wait), ahead, granted, tostring(now)}
"""
)

# KEYS: state hash. ARGV: share, burst_s, rpm (-1: unchanged), tpm (-1: unchanged), tokens used,
# hold_s (a 429's Retry-After: both buckets empty for that long), key ttl, the requests the
# provider said remained (-1: unknown), the grant number and time of the call it answered.
_OBSERVE = (
    _REFILL
    + """
k = k - tonumber(ARGV[5])
local hold = tonumber(ARGV[6])
if hold > 0 then
  r = math.min(r, -hold * rate_r)
  k = math.min(k, -hold * rate_k)
end
local left, grant, granted_at = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local rpm = tonumber(ARGV[3]) >= 0 and tonumber(ARGV[3]) or (tonumber(s[1]) or 0)
if hold <= 0 and left >= 0 and grant > 0 and rpm > 0 then
  -- The provider's bucket now holds at least what it had left when it admitted that call, plus
  -- its refill since, less every request granted after that call's (some may not have reached
  -- it yet). What is above its reserve (1 - share of the limit) we may spend at once.
  -- (not below 0: a Redis restart or an expired hash starts the grant numbers again)
  local since = math.max(0, (tonumber(redis.call('HGET', KEYS[1], 'g')) or grant) - grant)
  local level = math.min(rpm, left + math.max(0, now - granted_at) * rpm / 60) - since
  r = math.max(r, level - (1 - share) * rpm)
end
redis.call('HSET', KEYS[1], 'r', r, 'k', k, 'ts', now)
if tonumber(ARGV[3]) >= 0 then redis.call('HSET', KEYS[1], 'rpm', ARGV[3]) end
if tonumber(ARGV[4]) >= 0 then redis.call('HSET', KEYS[1], 'tpm', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[7])
return 1
"""
)

# KEYS: waiters, waiters' expiry. ARGV: token. A waiter that gave up leaves the line.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

KEY_TTL_S = 3600


@dataclass(frozen=True)
class PacerConfig:
    share: float
    burst_s: float
    wait_s: float

    @classmethod
    def from_settings(cls) -> PacerConfig:
        return cls(
            share=settings.COURSEGEN_PACER_SHARE,
            burst_s=settings.COURSEGEN_PACER_BURST_S,
            wait_s=settings.COURSEGEN_CONCURRENCY_WAIT_S,
        )


# The limits this process last wrote per model and when (monotonic), so an unchanged limit costs
# no round trip; it is written again after REFRESH_S in case the key expired or Redis restarted.
_known: dict[str, tuple[tuple[int, int], float]] = {}
REFRESH_S = 60.0


class Pacer:
    """One model's request and token buckets with their line of waiting calls."""

    def __init__(self, model: str, client: redis.Redis, config: PacerConfig | None = None):
        self.model = model
        self.config = config or PacerConfig.from_settings()
        self._state = f"coursegen:pace:{model}"
        self._line = [f"coursegen:pace:{model}:waiters", f"coursegen:pace:{model}:waiters-ttl"]
        self._take = client.register_script(_TAKE)
        self._observe = client.register_script(_OBSERVE)
        self._leave = client.register_script(_LEAVE)

    def try_take(self, *, token: str, rank: float) -> Turn:
        """Refused, the call stands in line at `rank` until it asks again with `token` or
        `leave`s. Granted with a wait of -1: the model's limits are unknown (not paced)."""
        c = self.config
        got, wait, ahead, grant, now = self._take(
            keys=[self._state, *self._line],
            args=[c.share, c.burst_s, token, f"{rank:.6f}", WAITER_TTL_S, KEY_TTL_S],
        )
        return Turn(bool(got), float(wait), int(ahead), int(grant), float(now))

    def take(
        self, *, rank: float | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> Turn | None:
        """Wait in line at `rank` until a request is ours; ProviderBusyError after the wait
        (`COURSEGEN_CONCURRENCY_WAIT_S`), when the call leaves the line. None: the model's
        limits are unknown and the call is not paced."""
        started = time.monotonic()
        token, rank = uuid.uuid4().hex, default_rank() if rank is None else rank
        try:
            while True:
                turn = self.try_take(token=token, rank=rank)
                if turn.granted:
                    return turn if turn.wait >= 0 else None
                waited, wait = time.monotonic() - started, turn.wait
                if waited + min(wait, MAX_SLEEP_S) > self.config.wait_s:
                    raise ProviderBusyError(self.model, waited, retry_after=max(wait, 1.0))
                # A little jitter, so waiters due at the same moment do not ask in step.
                sleep(min(max(wait, MIN_SLEEP_S) * (1 + 0.1 * random.random()), MAX_SLEEP_S))
        except BaseException:
            with contextlib.suppress(redis.RedisError):  # else it expires with WAITER_TTL_S
                self._leave(keys=self._line, args=[token])
            raise

    def observe(
        self,
        *,
        headers: Mapping[str, str],
        tokens: int = 0,
        retry_after: float = 0.0,
        turn: Turn | None = None,
    ) -> None:
        """Learn the limits from a reply's headers; charge the tokens it used; after a 429,
        hold every waiter back for `retry_after` seconds; with the `turn` the call was granted
        and the requests the provider said remained, spend what it holds above its reserve."""
        limits = (_limit(headers, "requests"), _limit(headers, "tokens"))
        known, written = _known.get(self.model, ((0, 0), -REFRESH_S))
        stale = known != limits or time.monotonic() - written >= REFRESH_S
        changed = limits != (-1, -1) and stale
        charge = tokens if max(limits[1], known[1]) > 0 else 0
        left = self._spare(headers, limits[0], turn)
        if not changed and not charge and retry_after <= 0 and left < 0:
            return
        c = self.config
        rpm, tpm = limits if changed else (-1, -1)
        grant, at = (turn.grant, turn.at) if turn else (0, 0.0)
        self._observe(
            keys=[self._state],
            args=[c.share, c.burst_s, rpm, tpm, charge, retry_after, KEY_TTL_S, left, grant, at],
        )
        if changed:
            _known[self.model] = (limits, time.monotonic())

    def _spare(self, headers: Mapping[str, str], rpm: int, turn: Turn | None) -> float:
        """The requests the provider said remained, when worth a round trip: more than its
        reserve and a burst above it; else -1."""
        left = _number(headers.get("x-ratelimit-remaining-requests"))
        if turn is None or left is None or rpm <= 0:
            return -1
        c = self.config
        worth = (1 - c.share) * rpm + max(1.0, c.share * rpm / 60 * c.burst_s)
        return left if left > worth else -1


class Turn(NamedTuple):
    """A waiter's answer: granted or not, seconds until its turn, waiters ranked ahead, and
    for a grant its number and time (Redis's clock)."""

    granted: bool
    wait: float
    ahead: int
    grant: int
    at: float


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _limit(headers: Mapping[str, str], kind: str) -> int:
    """The advertised per-minute limit, or -1 when the reply names none."""
    try:
        return max(0, int(float(headers[f"x-ratelimit-limit-{kind}"])))
    except (KeyError, TypeError, ValueError):
        return -1


def pacer_for(model: str) -> Pacer | None:
    """The model's pacer, or None when pacing is off or no shared store (REDIS_URL) is set."""
    if not settings.COURSEGEN_PACER_ENABLED or not settings.REDIS_URL:
        return None
    return Pacer(model, redis_client(settings.REDIS_URL))


# Models the pacer last said it does not pace (no limits known), per process, until when
# (monotonic). Within that a call skips the round trip that would say so again: with a provider
# that advertises no limits it was a third of a chord task's Redis round trips. A reply naming
# limits, or a 429, ends it at once; after it the pacer is asked again, so limits another process
# learned are found within UNPACED_RECHECK_S.
_unpaced_until: dict[str, float] = {}
UNPACED_RECHECK_S = 5.0


def call_paced(
    model: str, send: Callable[[bool], Completion], *, rank: float | None = None
) -> Completion:
    """`send(paced)` once the model's pacer grants a request at `rank` (`paced`: False when
    the model's limits are unknown or the pacer is off); what the reply (or a 429) says about
    the provider's limits goes back into the pacer. `send` is the call under the concurrency
    limit (`generation.concurrency.call_limited`)."""
    if time.monotonic() < _unpaced_until.get(model, 0.0):
        pacer, turn = None, None
    else:
        pacer = pacer_for(model)
        if pacer is None:
            return send(False)
        try:
            turn = pacer.take(rank=rank)
        except redis.RedisError as exc:
            logger.warning("pacer for %s unavailable (%s); failing open", model, exc)
            return send(False)
        if turn is None:
            _unpaced_until[model] = time.monotonic() + UNPACED_RECHECK_S
    try:
        completion = send(turn is not None)
    except TransientProviderError as exc:
        if exc.status_code == 429:
            _unpaced_until.pop(model, None)
            pacer = pacer or pacer_for(model)
            if pacer is not None:
                _observe(pacer, {}, retry_after=float(exc.retry_after or 1.0))
        raise
    headers = completion.headers
    if turn is None and (_limit(headers, "requests") >= 0 or _limit(headers, "tokens") >= 0):
        _unpaced_until.pop(model, None)  # limits named: the next call asks the pacer
        pacer = pacer or pacer_for(model)
    if pacer is None:
        return completion  # still unpaced: nothing for the pacer to learn or charge
    usage = completion.usage
    _observe(pacer, headers, tokens=usage.input_tokens + usage.output_tokens, turn=turn)
    return completion


def _observe(
    pacer: Pacer,
    headers: Mapping[str, str],
    *,
    tokens: int = 0,
    retry_after: float = 0.0,
    turn: Turn | None = None,
) -> None:
    try:
        pacer.observe(headers=headers, tokens=tokens, retry_after=retry_after, turn=turn)
    except redis.RedisError as exc:
        logger.warning("could not update the %s pacer (%s)", pacer.model, exc)
