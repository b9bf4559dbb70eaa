"""One task's conversation with the provider: call, validate, re-ask with feedback, record all.

Transport errors go through the one retry policy (generation/retry.py). Output that fails
validation is re-asked at once with the specific errors; each re-ask carries only the latest failed
output, so prompts do not grow with the number of attempts. The loop stops at the attempt limit,
when the token budget is spent, or when an attempt repeats the previous attempt's errors.
Every provider call becomes an AttemptRecord, whether it succeeded or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError

from generation.breaker import CircuitBreaker, CircuitOpenError
from generation.pricing import cost_of
from generation.prompts import build_messages, dumps, reask_messages
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    PermanentProviderError,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.retry import transport_retrying
from generation.schemas import OUTPUT_SCHEMAS, CourseOutline, CourseRequest, TaskKind, Tier
from generation.validation import FieldError, validate_output

logger = logging.getLogger("coursegen.generation")
INFRASTRUCTURE_ERRORS = (redis.RedisError, DatabaseError, InterfaceError, ConnectionError)
INFRASTRUCTURE_RETRY_S = 5.0


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    kind: str  # AttemptKind value
    outcome: str  # AttemptOutcome value
    model: str
    usage: Usage
    cost_usd: Decimal
    latency_ms: int
    errors: list[dict[str, str]] = field(default_factory=list)


@dataclass
class GenerationResult:
    data: dict[str, Any] | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    error: str = ""
    validation_errors: list[dict[str, str]] = field(default_factory=list)
    # Set when the provider could not be reached now: reschedule the task after this many seconds.
    defer_s: float | None = None
    lease_lost: bool = False

    @property
    def ok(self) -> bool:
        return self.data is not None

    def total(self, name: str) -> int:
        return sum(getattr(a.usage, name) for a in self.attempts)

    @property
    def cost_usd(self) -> Decimal:
        return sum((a.cost_usd for a in self.attempts), Decimal(0))


@dataclass
class TaskSpec:
    kind: TaskKind
    tier: Tier
    model: str
    request: CourseRequest
    outline: CourseOutline | None
    context: Mapping[str, Any]
    # Renews the task's lease before each call; False means another worker owns the task now.
    heartbeat: Callable[[], bool] | None = None
    deadline: float | None = None  # time.monotonic() after which no new call starts
    fallback_model: str | None = (
        None  # the other tier's model, used while this one's breaker is open
    )


class LeaseLostError(Exception):
    pass


class DeadlineError(Exception):
    pass


class _Conversation:
    """Holds the attempt ledger while one task talks to the provider."""

    def __init__(self, spec: TaskSpec, provider: Provider):
        self.spec = spec
        self.provider = provider
        self.result = GenerationResult()
        self.next_kind = "first"
        self.model = spec.model

    def record(
        self, outcome: str, usage: Usage, latency_s: float, errors: list[dict[str, str]]
    ) -> None:
        self.result.attempts.append(
            AttemptRecord(
                number=len(self.result.attempts) + 1,
                kind=self.next_kind,
                outcome=outcome,
                model=self.model,
                usage=usage,
                cost_usd=cost_of(usage, self.model),
                latency_ms=round(latency_s * 1000),
                errors=errors,
            )
        )

    def call_once(self, messages: tuple[Message, ...]) -> Completion:
        self._check_can_call()
        breaker = self._breaker()
        probe = breaker.before_call()
        request = CompletionRequest(
            messages=messages,
            schema=OUTPUT_SCHEMAS[self.spec.kind],
            model=self.model,
            tier=self.spec.tier,
            task_kind=self.spec.kind,
            context={**self.spec.context, "attempt": len(self.result.attempts) + 1},
        )
        started = time.monotonic()
        try:
            completion = self.provider.complete(request)
        except (TransientProviderError, PermanentProviderError) as exc:
            transient = isinstance(exc, TransientProviderError)
            if transient:
                breaker.record_failure(probe=probe)
            else:
                breaker.record_success(probe=probe)  # the provider answered: it is up
            latency = exc.latency_s or time.monotonic() - started
            outcome = "transient" if transient else "permanent"
            self.record(outcome, exc.usage, latency, [{"path": "", "message": str(exc)}])
            self.next_kind = "transport_retry"
            raise
        except InvalidOutputError:
            breaker.record_success(probe=probe)
            raise
        breaker.record_success(probe=probe)
        return completion

    def _check_can_call(self) -> None:
        if self.spec.deadline is not None and time.monotonic() > self.spec.deadline:
            raise DeadlineError("task deadline reached")
        if self.result.attempts and self.spec.heartbeat and not self.spec.heartbeat():
            raise LeaseLostError("the task's lease was taken over by another worker")

    def _breaker(self) -> CircuitBreaker:
        """This model's breaker; while it is open, the fallback model's if that one is closed."""
        breaker = CircuitBreaker(self.model)
        fallback = self.spec.fallback_model
        if fallback and fallback != self.model and breaker.state() != "closed":
            other = CircuitBreaker(fallback)
            if other.state() == "closed":
                self.model = fallback
                return other
        return breaker

    def call(self, messages: tuple[Message, ...]) -> Completion:
        return transport_retrying()(self.call_once, messages)


def _errors_of_invalid(exc: InvalidOutputError) -> tuple[FieldError, ...]:
    return (FieldError("", f"the reply is not a single JSON object ({exc})"),)


def generate(spec: TaskSpec, provider: Provider) -> GenerationResult:
    convo = _Conversation(spec, provider)
    try:
        _converse(convo)
    except CircuitOpenError as exc:
        convo.result.defer_s = exc.retry_after
        convo.result.error = str(exc)
    except TransientProviderError as exc:  # retries exhausted: the provider is down, not the task
        convo.result.defer_s = exc.retry_after or settings.COURSEGEN_TASK_DEFER_MAX_S
        convo.result.error = f"provider unavailable: {exc}"
    except DeadlineError as exc:
        convo.result.defer_s = 0.0
        convo.result.error = str(exc)
    except LeaseLostError as exc:
        convo.result.lease_lost = True
        convo.result.error = str(exc)
    except INFRASTRUCTURE_ERRORS as exc:  # our database or Redis blinked: try again later
        logger.warning("task deferred after an infrastructure error: %r", exc)
        convo.result.defer_s = INFRASTRUCTURE_RETRY_S
        convo.result.error = f"infrastructure error: {type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug: fail the task, but keep the ledger of the calls made
        logger.exception("task crashed")
        convo.result.error = f"internal error: {type(exc).__name__}: {exc}"
    return convo.result


def _converse(convo: _Conversation) -> None:
    spec = convo.spec
    base = build_messages(
        spec.kind, request=spec.request, outline=spec.outline, context=spec.context
    )
    messages, previous_errors = base, None
    for _ in range(settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS):
        try:
            completion = convo.call(messages)
        except InvalidOutputError as exc:
            errors, raw = _errors_of_invalid(exc), exc.raw_text
            usage, latency = exc.usage, exc.latency_s
        except PermanentProviderError as exc:
            convo.result.error = f"{type(exc).__name__}: {exc}"
            return
        else:
            outcome = validate_output(
                spec.kind, completion.data, request=spec.request, context=spec.context
            )
            usage, latency, raw = completion.usage, completion.latency_s, completion.raw_text
            if outcome.ok:
                convo.record("ok", usage, latency, [])
                convo.result.data = outcome.model.model_dump(mode="json") if outcome.model else None
                return
            errors = outcome.errors
        convo.record("invalid", usage, latency, [e.as_dict() for e in errors])
        convo.result.validation_errors = [e.as_dict() for e in errors]
        if errors == previous_errors:
            convo.result.error = "stopped early: the re-ask repeated the same validation errors"
            return
        previous_errors = errors
        convo.next_kind = "reask"
        messages = reask_messages(
            base, failed_output=raw or dumps({}), errors=[str(e) for e in errors]
        )
    convo.result.error = (
        f"output invalid after {settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS} attempts"
    )
