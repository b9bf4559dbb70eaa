"""One task's conversation with the provider: call, validate, re-ask with feedback, record all.

Transport errors go through the one retry policy (generation/retry.py). Output that fails
validation is re-asked at once with the specific errors; each re-ask carries only the latest failed
output, so prompts do not grow with the number of attempts. The loop stops at the attempt limit,
when the token budget is spent, or when an attempt repeats the previous attempt's errors.
Every provider call becomes an AttemptRecord, whether it succeeded or not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings

from generation.pricing import cost_of
from generation.prompts import build_messages, dumps, reask_messages
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    PermanentProviderError,
    Provider,
    ProviderError,
    TransientProviderError,
    Usage,
)
from generation.retry import transport_retrying
from generation.schemas import OUTPUT_SCHEMAS, CourseOutline, CourseRequest, TaskKind, Tier
from generation.validation import FieldError, validate_output


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


class _Conversation:
    """Holds the attempt ledger while one task talks to the provider."""

    def __init__(self, spec: TaskSpec, provider: Provider):
        self.spec = spec
        self.provider = provider
        self.result = GenerationResult()
        self.next_kind = "first"

    def record(
        self, outcome: str, usage: Usage, latency_s: float, errors: list[dict[str, str]]
    ) -> None:
        self.result.attempts.append(
            AttemptRecord(
                number=len(self.result.attempts) + 1,
                kind=self.next_kind,
                outcome=outcome,
                model=self.spec.model,
                usage=usage,
                cost_usd=cost_of(usage, self.spec.model),
                latency_ms=round(latency_s * 1000),
                errors=errors,
            )
        )

    def call_once(self, messages: tuple[Message, ...]) -> Completion:
        request = CompletionRequest(
            messages=messages,
            schema=OUTPUT_SCHEMAS[self.spec.kind],
            model=self.spec.model,
            tier=self.spec.tier,
            task_kind=self.spec.kind,
            context={**self.spec.context, "attempt": len(self.result.attempts) + 1},
        )
        started = time.monotonic()
        try:
            return self.provider.complete(request)
        except (TransientProviderError, PermanentProviderError) as exc:
            outcome = "transient" if isinstance(exc, TransientProviderError) else "permanent"
            latency = exc.latency_s or time.monotonic() - started
            self.record(outcome, exc.usage, latency, [{"path": "", "message": str(exc)}])
            self.next_kind = "transport_retry"
            raise

    def call(self, messages: tuple[Message, ...]) -> Completion:
        return transport_retrying()(self.call_once, messages)


def _errors_of_invalid(exc: InvalidOutputError) -> tuple[FieldError, ...]:
    return (FieldError("", f"the reply is not a single JSON object ({exc})"),)


def generate(spec: TaskSpec, provider: Provider) -> GenerationResult:
    convo = _Conversation(spec, provider)
    base = build_messages(
        spec.kind, request=spec.request, outline=spec.outline, context=spec.context
    )
    messages, previous_errors = base, None
    for _ in range(settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS):
        try:
            completion = convo.call(messages)
        except InvalidOutputError as exc:
            errors, raw, usage, latency = (
                _errors_of_invalid(exc),
                exc.raw_text,
                exc.usage,
                exc.latency_s,
            )
        except ProviderError as exc:
            convo.result.error = f"{type(exc).__name__}: {exc}"
            return convo.result
        else:
            outcome = validate_output(
                spec.kind, completion.data, request=spec.request, context=spec.context
            )
            usage, latency, raw = completion.usage, completion.latency_s, completion.raw_text
            if outcome.ok:
                convo.record("ok", usage, latency, [])
                convo.result.data = outcome.model.model_dump(mode="json") if outcome.model else None
                return convo.result
            errors = outcome.errors
        convo.record("invalid", usage, latency, [e.as_dict() for e in errors])
        convo.result.validation_errors = [e.as_dict() for e in errors]
        if errors == previous_errors:
            convo.result.error = "stopped early: the re-ask repeated the same validation errors"
            return convo.result
        previous_errors = errors
        convo.next_kind = "reask"
        messages = reask_messages(
            base, failed_output=raw or dumps({}), errors=[str(e) for e in errors]
        )
    convo.result.error = (
        f"output invalid after {settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS} attempts"
    )
    return convo.result
