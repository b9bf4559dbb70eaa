"""A circuit breaker per model, its state shared by every worker through the Django cache (Redis).

Closed: calls flow; each transport outcome is counted in 10-second buckets. When, over the last
window, at least `min_calls` calls were made and the failure rate reaches `failure_rate`, the
breaker opens for `open_s` seconds. Open: calls are refused at once (the task is deferred, or sent
to the other tier). After `open_s` it is half-open: one caller wins the probe slot (an atomic
`cache.add`); a successful probe closes the breaker, a failed one opens it again.
Validation failures are not counted: a provider that answers with bad JSON is up.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from monitoring.signals import breaker_changed

logger = logging.getLogger("coursegen.breaker")

BUCKET_S = 10
F = TypeVar("F", bound=Callable[..., Any])


def fail_open(default: Any) -> Callable[[F], F]:
    """The breaker is best effort: if its store (Redis) is down, calls flow as if it were closed."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except CircuitOpenError:
                raise
            except Exception as exc:  # redis-py errors, timeouts: never fail a task for them
                logger.warning("circuit breaker store unavailable (%s); failing open", exc)
                return default

        return wrapper  # type: ignore[return-value]

    return decorate


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    window_s: int
    min_calls: int
    failure_rate: float
    open_s: float

    @classmethod
    def from_settings(cls) -> BreakerConfig:
        return cls(
            window_s=settings.COURSEGEN_BREAKER_WINDOW_S,
            min_calls=settings.COURSEGEN_BREAKER_MIN_CALLS,
            failure_rate=settings.COURSEGEN_BREAKER_FAILURE_RATE,
            open_s=settings.COURSEGEN_BREAKER_OPEN_S,
        )


class CircuitOpenError(Exception):
    def __init__(self, model: str, retry_after: float):
        super().__init__(f"circuit breaker open for {model}; retry in {retry_after:.1f}s")
        self.model = model
        self.retry_after = retry_after


def _key(model: str, suffix: str) -> str:
    return f"breaker:{model}:{suffix}"


class CircuitBreaker:
    def __init__(self, model: str, config: BreakerConfig | None = None):
        self.model = model
        self.config = config or BreakerConfig.from_settings()

    # --- state -----------------------------------------------------------------------------------
    @fail_open(BreakerState.CLOSED)
    def state(self, now: float | None = None) -> BreakerState:
        opened_until = cache.get(_key(self.model, "open_until"))
        if opened_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if (now or time.time()) < opened_until else BreakerState.HALF_OPEN

    @fail_open(False)
    def before_call(self) -> bool:
        """Raise CircuitOpenError unless a call may go out; True when this call is the probe."""
        now = time.time()
        opened_until = cache.get(_key(self.model, "open_until"))
        if opened_until is None:
            return False
        if now < opened_until:
            raise CircuitOpenError(self.model, opened_until - now)
        # Half-open: exactly one caller probes; the others wait a little and look again.
        if cache.add(_key(self.model, "probe"), 1, timeout=max(self.config.open_s, 5)):
            return True
        raise CircuitOpenError(self.model, min(self.config.open_s, 5.0))

    # --- the limiter's scripts ------------------------------------------------------------------
    def shared_key(self, suffix: str) -> str | None:
        """This breaker's `suffix` key as stored, when its store is the Redis at REDIS_URL (the
        concurrency limiter's): the limiter's scripts check it and count in it in their own
        round trips (generation/concurrency.py). None with another store."""
        backend = caches["default"]
        servers = getattr(backend, "_servers", None)  # Django's RedisCache: its LOCATION, split
        if not isinstance(backend, RedisCache) or servers != [settings.REDIS_URL]:
            return None
        return str(backend.make_and_validate_key(_key(self.model, suffix)))

    def shared_count_key(self, outcome: str) -> tuple[str, int] | None:
        """The current bucket's key of `outcome` (as `_count` increments it) and its ttl."""
        key = self.shared_key(f"{outcome}:{int(time.time()) // BUCKET_S}")
        return None if key is None else (key, self.config.window_s + BUCKET_S)

    # --- outcomes --------------------------------------------------------------------------------
    @fail_open(None)
    def record_success(self, *, probe: bool = False) -> None:
        self._count("ok")
        if probe:  # a call that started before the breaker opened proves nothing
            self._close()

    @fail_open(None)
    def record_failure(self, *, probe: bool = False) -> None:
        self._count("fail")
        if probe:
            self._open(reason="half-open probe failed")
            return
        ok, failed = self._window_counts()
        total = ok + failed
        tripped = total >= self.config.min_calls and failed / total >= self.config.failure_rate
        if tripped and cache.get(_key(self.model, "open_until")) is None:
            self._open(reason=f"{failed}/{total} calls failed in {self.config.window_s}s")

    def _count(self, outcome: str) -> None:
        key = _key(self.model, f"{outcome}:{int(time.time()) // BUCKET_S}")
        timeout = self.config.window_s + BUCKET_S
        backend = caches["default"]
        if isinstance(backend, RedisCache):
            # One round trip (INCR + EXPIRE) per call instead of Django's add, exists and incr.
            raw_key = backend.make_and_validate_key(key)
            client = backend._cache.get_client(raw_key, write=True)
            pipe = client.pipeline(transaction=False)
            pipe.incr(raw_key)
            pipe.expire(raw_key, timeout)
            pipe.execute()
            return
        cache.add(key, 0, timeout=timeout)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=timeout)

    def _window_counts(self) -> tuple[int, int]:
        current = int(time.time()) // BUCKET_S
        buckets = range(current - self.config.window_s // BUCKET_S + 1, current + 1)
        keys = [_key(self.model, f"{o}:{b}") for b in buckets for o in ("ok", "fail")]
        values = cache.get_many(keys)
        ok = sum(v for k, v in values.items() if ":ok:" in k)
        return ok, sum(v for k, v in values.items() if ":fail:" in k)

    def _open(self, *, reason: str) -> None:
        cache.set(_key(self.model, "open_until"), time.time() + self.config.open_s, timeout=None)
        cache.delete(_key(self.model, "probe"))
        logger.error("circuit breaker OPENED for %s: %s", self.model, reason)
        _notify(self.model, BreakerState.OPEN, reason)

    def _close(self) -> None:
        cache.delete_many([_key(self.model, "open_until"), _key(self.model, "probe")])
        self._reset_window()
        logger.warning("circuit breaker closed for %s", self.model)
        _notify(self.model, BreakerState.CLOSED, "probe succeeded")

    def _reset_window(self) -> None:
        current = int(time.time()) // BUCKET_S
        buckets = range(current - self.config.window_s // BUCKET_S, current + 1)
        cache.delete_many([_key(self.model, f"{o}:{b}") for b in buckets for o in ("ok", "fail")])


def _notify(model: str, state: BreakerState, reason: str) -> None:
    """Tell monitoring (a signal: the breaker does not decide what deserves an alert)."""
    breaker_changed.send(sender=CircuitBreaker, model=model, state=state, reason=reason)


def breaker_states(models: list[str]) -> dict[str, str]:
    return {model: CircuitBreaker(model).state().value for model in models}
