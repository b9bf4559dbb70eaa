"""A provider-side rate limit for the offline simulator: requests and tokens per minute, per model.

Two token buckets per model, like OpenAI's limits: one of `rpm` requests and one of `tpm` tokens,
each refilling continuously at its per-minute rate. A call that finds either bucket short is
refused (429 with `retry-after-ms`) and charged nothing; an admitted call takes one request and its
input + output tokens. Every answer carries OpenAI's headers (`x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the `-tokens` trio), so the
concurrency limiter (generation/concurrency.py) sees what it would see from a real provider.

With REDIS_URL set the buckets live in Redis and every worker process shares them (one provider,
one limit: the faithful emulation); without it each process has its own buckets.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import redis

# KEYS: bucket hash (it also counts calls admitted and refused). ARGV: rpm, tpm, tokens.
# Returns {admitted, requests left, tokens left, wait}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local r = tonumber(s[1]) or rpm
local k = tonumber(s[2]) or tpm
local elapsed = math.max(0, now - (tonumber(s[3]) or now))
r = math.min(rpm, r + elapsed * rpm / 60)
k = math.min(tpm, k + elapsed * tpm / 60)
local wait = 0
if rpm > 0 and r < 1 then wait = math.max(wait, (1 - r) * 60 / rpm) end
if tpm > 0 and k < need then wait = math.max(wait, (need - k) * 60 / tpm) end
local admitted = 0
if wait == 0 then
  admitted = 1
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then k = k - need end
end
redis.call('HSET', KEYS[1], 'r', r, 't', k, 'ts', now)
redis.call('HINCRBY', KEYS[1], admitted == 1 and 'admitted' or 'refused', 1)
redis.call('EXPIRE', KEYS[1], 120)
return {admitted, tostring(r), tostring(k), tostring(wait)}
"""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    headers: dict[str, str]
    retry_after_s: float


@dataclass
class _Bucket:
    requests: float
    tokens: float
    stamp: float


def bucket_key(model: str) -> str:
    return f"coursegen:offline-ratelimit:{model}"


class ProviderRateLimit:
    """The emulated limit. `rpm`/`tpm` of 0 switch that bucket off."""

    def __init__(self, *, rpm: int, tpm: int, client: redis.Redis | None = None):
        self.rpm, self.tpm = rpm, tpm
        self._client = client
        self._script = client.register_script(_TAKE) if client is not None else None
        self._local: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    def take(self, model: str, tokens: int) -> Admission:
        need = min(tokens, self.tpm) if self.tpm else 0  # a call larger than the limit still fits
        if self._script is not None:
            got, r, k, wait = self._script(
                keys=[bucket_key(model)], args=[self.rpm, self.tpm, need]
            )
            admitted, left_r, left_t, wait_s = bool(got), float(r), float(k), float(wait)
        else:
            admitted, left_r, left_t, wait_s = self._take_local(model, need)
        return Admission(admitted, self._headers(left_r, left_t, wait_s, admitted), wait_s)

    def _take_local(self, model: str, need: int) -> tuple[bool, float, float, float]:
        with self._lock:
            now = time.monotonic()
            b = self._local.setdefault(model, _Bucket(self.rpm, self.tpm, now))
            elapsed = now - b.stamp
            b.requests = min(self.rpm, b.requests + elapsed * self.rpm / 60)
            b.tokens = min(self.tpm, b.tokens + elapsed * self.tpm / 60)
            b.stamp = now
            wait = 0.0
            if self.rpm and b.requests < 1:
                wait = max(wait, (1 - b.requests) * 60 / self.rpm)
            if self.tpm and b.tokens < need:
                wait = max(wait, (need - b.tokens) * 60 / self.tpm)
            if wait == 0.0:
                b.requests -= 1 if self.rpm else 0
                b.tokens -= need if self.tpm else 0
            return wait == 0.0, b.requests, b.tokens, wait

    def _headers(
        self, requests: float, tokens: float, wait_s: float, admitted: bool
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, limit, left in (("requests", self.rpm, requests), ("tokens", self.tpm, tokens)):
            if limit:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(left)))
                headers[f"x-ratelimit-reset-{kind}"] = _duration((limit - left) * 60 / limit)
        if not admitted:
            headers["retry-after-ms"] = str(math.ceil(wait_s * 1000))
        return headers


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "20ms"."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"
