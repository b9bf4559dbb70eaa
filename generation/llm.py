"""One task's conversation with the provider: the one re-ask policy, targeted repair, the ledger.

The policy (`ReaskPolicy`, from settings), in one place:

* Transport errors (429, 5xx, timeouts) are not re-asks: generation/retry.py retries them with
  backoff. Permanent errors end the task at once.
* Output that does not parse or validate (the schema, then generation/checks.py) is asked for
  again at once, with the failed output and every error's field path and message. A re-ask
  *replaces* the failed attempt: its messages are the base prompt plus the latest failure only,
  so prompts do not grow with the number of attempts.
* When the errors fall inside a few parts of the object (one question, one field), only those
  parts are requested, each with its own schema, and merged back (targeted regeneration). A whole
  re-ask follows only when the errors are object-wide or a part cannot be repaired.
* Each request (the whole object, or one part) has at most `max_attempts` attempts and stops
  early when an attempt repeats the previous attempt's errors. `token_budget` caps what one run
  of a task may spend in all: no request starts that would take it past the budget.

Every provider call becomes an `AttemptRecord` (kind first / reask / part / transport_retry). Each
call goes through the model's circuit breaker, renews the task's lease and respects its deadline;
when the provider is unreachable the task is deferred rather than failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError
from pydantic import BaseModel, ValidationError

from generation import parts
from generation.breaker import CircuitBreaker, CircuitOpenError
from generation.concurrency import call_limited
from generation.field_errors import FieldError, describe, public_error
from generation.llm_types import REPAIR_KINDS as REPAIR_KINDS  # re-exported
from generation.llm_types import (
    AttemptRecord,
    BatchRepairNeeded,
    BatchReplay,
    DeadlineError,
    GenerationResult,
    LeaseLostError,
    ReaskPolicy,
    StopGeneration,
    TaskSpec,
)
from generation.llm_types import Review as Review  # re-exported
from generation.moderation import flagged_feedback, moderation_call, text_of
from generation.output_bounds import bounded_schema
from generation.pacer import call_paced
from generation.pricing import cost_of
from generation.prompts import build_messages, dumps, part_messages, reask_messages
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    ModerationRequest,
    ModerationResult,
    PermanentProviderError,
    Provider,
    ProviderError,
    TransientProviderError,
    Usage,
)
from generation.retry import transport_retrying
from generation.schemas import OUTPUT_SCHEMAS
from generation.tokens import count_message_tokens
from generation.validation import validate_output

logger = logging.getLogger("coursegen.generation")
INFRASTRUCTURE_ERRORS = (redis.RedisError, DatabaseError, InterfaceError, ConnectionError)
INFRASTRUCTURE_RETRY_S = 5.0

Errors = tuple[FieldError, ...]
ExtraCheck = Callable[[dict[str, Any]], list[FieldError]]
JUDGE_KIND = "judge"  # AttemptKind.JUDGE: every call of a review
MODERATION_KIND = "moderation"  # AttemptKind.MODERATION: a call of the moderation endpoint

BATCH_KIND = "batch"  # AttemptKind.BATCH: a first attempt answered by a batch line


@dataclass(frozen=True)
class _Reply:
    data: Any  # the parsed JSON; None when the text was not a JSON object
    raw: str
    usage: Usage
    latency_s: float
    errors: Errors = ()  # set when the text was not a JSON object
    batch: bool = False  # a batch line's answer: priced at the batch discount
    replayed: bool = False  # in the ledger already, from the run that took it first


# What a batch line brought (generation/services/batches.py): its answer, used as the first
# attempt, or the invalid text it had (re-asked like any invalid reply).
BatchAnswer = Completion | InvalidOutputError


class _Conversation:
    """One run of a task: its base prompt, the policy and the attempt ledger."""

    def __init__(
        self,
        spec: TaskSpec,
        provider: Provider,
        policy: ReaskPolicy,
        batch: BatchReplay | None = None,
    ):
        self.spec, self.provider, self.policy = spec, provider, policy
        self.model = spec.model  # may switch to the fallback model while a breaker is open
        self.result = GenerationResult()
        self.batch = batch
        self.taken = 0  # batch answers taken by send() so far
        if spec.review is not None:
            self.schema, self.base = spec.review.schema, spec.review.messages
            return
        self.schema = OUTPUT_SCHEMAS[spec.kind]
        self.base = build_messages(
            spec.kind,
            request=spec.request,
            outline=spec.outline,
            context=spec.context,
            instruction=spec.instruction,
            version=spec.prompt_version,
        )

    # --- the ledger and the budget ---------------------------------------------------------------
    def record(
        self, kind: str, part: str, reply: _Reply, errors: Errors, outcome: str = ""
    ) -> None:
        if reply.replayed:
            return
        judged = self.spec.review is not None and kind != BATCH_KIND
        self.result.attempts.append(
            AttemptRecord(
                number=len(self.result.attempts) + 1,
                kind=JUDGE_KIND if judged else kind,
                outcome=outcome or ("invalid" if errors else "ok"),
                model=self.model,
                usage=reply.usage,
                cost_usd=cost_of(reply.usage, self.model, batch=reply.batch),
                latency_ms=round(reply.latency_s * 1000),
                errors=[e.as_dict() for e in errors],
                part=part,
                batch=reply.batch,
            )
        )

    def _record_failure(self, kind: str, part: str, exc: ProviderError, latency_s: float) -> None:
        outcome = "transient" if isinstance(exc, TransientProviderError) else "permanent"
        reply = _Reply(None, "", exc.usage, exc.latency_s or latency_s)
        self.record(kind, part, reply, (FieldError("", str(exc)),), outcome)

    def tokens_used(self) -> int:
        return sum(a.usage.total_tokens for a in self.result.attempts)

    def _check_deadline(self) -> None:
        if self.spec.deadline is not None and time.monotonic() > self.spec.deadline:
            raise DeadlineError("task deadline reached")

    def _check_can_call(self) -> None:
        self._check_deadline()
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

    def _check_budget(self, messages: tuple[Message, ...]) -> None:
        used, budget = self.tokens_used(), self.policy.token_budget
        # A token is at least one byte of UTF-8, so the bytes bound the count: tokenizing every
        # prompt (~0.3 ms each) is only needed when that bound does not fit the budget.
        if used + sum(len(m.content.encode()) + 3 for m in messages) + 3 <= budget:
            return
        needed = count_message_tokens([m.as_dict() for m in messages])
        if used + needed > budget:
            raise StopGeneration(
                f"token budget exhausted: {used} tokens used and the next request needs about "
                f"{needed} more; the budget is {budget} tokens per task"
            )

    # --- one request, transport errors retried ----------------------------------------------------
    def send(
        self,
        messages: tuple[Message, ...],
        *,
        schema: type[BaseModel],
        kind: str,
        part: str = "",
        context: Mapping[str, Any] | None = None,
    ) -> tuple[_Reply, str]:
        """Call the provider once (plus transport retries); return the reply and its kind."""
        kinds = [kind]
        if self.batch is not None:
            given = self._batch_answer(messages, schema=schema, part=part, context=context)
            if given is not None:
                return given, BATCH_KIND if self.taken == 1 else kind

        def once() -> _Reply:
            self._check_can_call()
            self._check_budget(messages)
            breaker = self._breaker()
            request = self.request_for(messages, schema=schema, part=part, context=context)
            started = time.monotonic()
            try:
                # Paced to the provider's advertised limit, then through the breaker
                # (CircuitOpenError while open; the outcome counted: invalid output and refusals
                # are successes, transient errors failures) and AIMD; both in rank order.
                completion = call_paced(
                    request.model,
                    lambda paced: call_limited(
                        self.provider, request, rank=self.spec.rank, paced=paced, breaker=breaker
                    ),
                    rank=self.spec.rank,
                )
            except InvalidOutputError as exc:
                error = FieldError("", f"the reply is not a single JSON object ({exc})")
                return _Reply(None, exc.raw_text, exc.usage, exc.latency_s, (error,))
            except (TransientProviderError, PermanentProviderError) as exc:
                self._record_failure(kinds[0], part, exc, time.monotonic() - started)
                kinds[0] = "transport_retry"
                raise
            return _Reply(
                completion.data, completion.raw_text, completion.usage, completion.latency_s
            )

        reply = transport_retrying()(once)
        return reply, kinds[0]

    def _batch_answer(
        self,
        messages: tuple[Message, ...],
        *,
        schema: type[BaseModel],
        part: str,
        context: Mapping[str, Any] | None,
    ) -> _Reply | None:
        """The next batch line's answer for this request; None: make the call live. A repair
        with no line yet goes into the next batch when the run says so."""
        assert self.batch is not None
        if self.taken < len(self.batch.answers):
            given = self.batch.answers[self.taken]
            self.taken += 1
            return _batch_reply(given, replayed=self.taken <= self.batch.recorded)
        if self.batch.repairs_by_batch:
            request = self.request_for(messages, schema=schema, part=part, context=context)
            raise BatchRepairNeeded(request)
        return None

    def request_for(
        self,
        messages: tuple[Message, ...],
        *,
        schema: type[BaseModel],
        part: str = "",
        context: Mapping[str, Any] | None = None,
    ) -> CompletionRequest:
        return CompletionRequest(
            messages=messages,
            schema=schema,
            model=self.model,
            tier=self.spec.tier,
            task_kind=self.spec.kind,
            context={
                **self.spec.context,
                **(context or {}),
                "attempt": len(self.result.attempts) + 1,
                "part": part,
            },
            purpose=JUDGE_KIND if self.spec.review else "generate",
            json_schema=bounded_schema(schema, request=self.spec.request),
        )

    # --- moderation ------------------------------------------------------------------------------
    def moderate(self, data: dict[str, Any]) -> ModerationResult:
        """One moderation call of the output's text, in the ledger as attempt kind
        `moderation` (with any failed calls): no tokens, no cost, its latency. It checks the
        deadline but does not renew the lease: it is short, and a result already paid for must
        not be lost to a database blip before it is recorded (the record retries instead)."""
        assert self.spec.moderator is not None
        request = ModerationRequest(texts=(text_of(data),), model=self.spec.moderation_model)
        verdict = moderation_call(
            self.spec.moderator,
            request,
            before=self._check_deadline,
            failed=lambda exc, latency_s: self._record_moderation(request.model, exc, latency_s),
        )
        self._record_moderation(verdict.model, verdict, verdict.latency_s)
        return verdict

    def _record_moderation(self, model: str, outcome: Any, latency_s: float) -> None:
        if isinstance(outcome, ModerationResult):
            errors = [f"flagged: {', '.join(outcome.categories)}"] if outcome.flagged else []
            kind = "flagged" if outcome.flagged else "ok"
        else:
            errors = [str(outcome)]
            kind = "transient" if isinstance(outcome, TransientProviderError) else "permanent"
        self.result.attempts.append(
            AttemptRecord(
                number=len(self.result.attempts) + 1,
                kind=MODERATION_KIND,
                outcome=kind,
                model=model,
                usage=Usage(),
                cost_usd=Decimal(0),  # OpenAI's moderation endpoint is free
                latency_ms=round(latency_s * 1000),
                errors=[{"path": "", "message": e} for e in errors],
            )
        )

    # --- validation ------------------------------------------------------------------------------
    def check(self, data: Any) -> tuple[Any, Errors]:
        """Validate a whole object; on success return it normalised by its schema."""
        if self.spec.review is not None:  # a verdict: its schema is all there is to check
            try:
                return self.schema.model_validate(data).model_dump(mode="json"), ()
            except ValidationError as exc:
                return data, _part_errors("", exc)
        outcome = validate_output(
            self.spec.kind, data, request=self.spec.request, context=self.spec.context
        )
        if outcome.ok and outcome.model is not None:
            return outcome.model.model_dump(mode="json"), ()
        return data, outcome.errors

    def check_part(
        self, data: dict[str, Any], part: str, candidate: Any, extra: ExtraCheck | None
    ) -> tuple[Any, Errors]:
        """Validate a candidate part: its own schema, then every check of the merged object that
        concerns this part (errors elsewhere are other parts' business)."""
        schema = parts.part_schema(self.schema, part)
        try:
            value = schema.model_validate(candidate).model_dump(mode="json")
        except ValidationError as exc:
            return candidate, _part_errors(part, exc)
        merged = parts.merge(data, part, value)
        _, errors = self.check(merged)
        found = list(parts.within(part, errors)) + (extra(merged) if extra else [])
        return value, tuple(found)


def _batch_reply(given: BatchAnswer, *, replayed: bool) -> _Reply:
    if isinstance(given, InvalidOutputError):
        error = FieldError("", f"the reply is not a single JSON object ({given})")
        usage, latency = given.usage, given.latency_s
        return _Reply(None, given.raw_text, usage, latency, (error,), True, replayed)
    return _Reply(given.data, given.raw_text, given.usage, given.latency_s, (), True, replayed)


def _part_errors(part: str, exc: ValidationError) -> Errors:
    """Pydantic errors of a part, with paths in the whole object (questions.2.correct_answer)."""
    item = "." in part  # an item's locations are relative to it; a field part's start with it
    errors = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = (f"{part}.{loc}" if loc else part) if item else (loc or part)
        errors.append(FieldError(path, err["msg"]))
    return tuple(errors)


def _hints(data: dict[str, Any], part: str) -> list[str]:
    """What a part request should know about the rest of the object."""
    field, _, index = part.partition(".")
    if field != "questions" or not index:
        return []
    others = [q.get("stem", "") for i, q in enumerate(data["questions"]) if i != int(index)]
    return ["Other questions of this assessment (do not repeat them):"] + [f"- {s}" for s in others]


# --- Targeted regeneration -----------------------------------------------------------------------
def _repair_part(
    convo: _Conversation,
    data: dict[str, Any],
    part: str,
    errors: Sequence[FieldError],
    *,
    extra: ExtraCheck | None = None,
    hints: Sequence[str] = (),
    context: Mapping[str, Any] | None = None,
) -> Any | None:
    """One part's own bounded re-ask loop; the repaired part, or None if it could not be fixed."""
    schema = parts.part_schema(convo.schema, part)
    base = part_messages(
        convo.base,
        part=part,
        schema=schema.__name__,
        current=parts.extract(data, part),
        errors=[str(e) for e in errors],
        hints=[*_hints(data, part), *hints],
    )
    messages, previous = base, None
    for _ in range(convo.policy.max_attempts):
        reply, kind = convo.send(messages, schema=schema, kind="part", part=part, context=context)
        value, found = (
            (reply.data, reply.errors)
            if reply.errors
            else convo.check_part(data, part, reply.data, extra)
        )
        convo.record(kind, part, reply, found)
        if not found:
            return value
        if found == previous:
            return None  # the same errors again: the whole re-ask may do better
        previous = found
        messages = reask_messages(
            base, failed_output=reply.raw or dumps(value), errors=[str(e) for e in found]
        )
    return None


def _repair_parts(convo: _Conversation, data: Any, errors: Errors) -> tuple[Any, Errors]:
    """Regenerate only the failing parts when that is possible; return the merged object and
    the errors that remain."""
    failing = parts.failing_parts(convo.schema, data, errors)
    if not failing:
        return data, errors
    for part in failing:
        value = _repair_part(convo, data, part, parts.within(part, errors))
        if value is not None:
            data = parts.merge(data, part, value)
    return convo.check(data)


# --- The whole object ----------------------------------------------------------------------------
def _keep_good_parts(
    convo: _Conversation, data: Any, errors: Errors, earlier: Any, earlier_errors: Errors
) -> tuple[Any, Errors]:
    """A re-ask must not lose what an earlier attempt got right: patch the new reply's failing
    parts with the earlier attempt's versions of them that passed, and keep the patched object
    if it fails less (it is validated whole, so parts that do not fit together are caught)."""
    if not (errors and isinstance(data, dict) and isinstance(earlier, dict)):
        return data, errors
    failing = {parts.part_of(convo.schema, e.path) for e in errors}
    bad_before = {parts.part_of(convo.schema, e.path) for e in earlier_errors}
    shared = set(parts.parts_of(convo.schema, data)) & set(parts.parts_of(convo.schema, earlier))
    patch = [p for p in failing if p is not None and p in shared and p not in bad_before]
    if None in failing or not patch:
        return data, errors
    candidate = data
    for part in patch:
        candidate = parts.merge(candidate, part, parts.extract(earlier, part))
    merged, found = convo.check(candidate)
    return (merged, found) if len(found) < len(errors) else (data, errors)


def _whole(
    convo: _Conversation, messages: tuple[Message, ...] | None = None, kind: str = "first"
) -> dict[str, Any]:
    messages, previous = messages or convo.base, None
    best: Any = None  # the latest object that parsed, as repaired so far
    for _ in range(convo.policy.max_attempts):
        reply, sent = convo.send(messages, schema=convo.schema, kind=kind)
        data, errors = (reply.data, reply.errors) if reply.errors else convo.check(reply.data)
        convo.record(sent, "", reply, errors)
        if convo.spec.review is None:  # a verdict is re-asked whole
            data, errors = _keep_good_parts(convo, data, errors, best, previous or ())
            if errors:
                data, errors = _repair_parts(convo, data, errors)
        if not errors:
            return dict(data)
        convo.result.validation_errors = [e.as_dict() for e in errors]
        if errors == previous:
            raise StopGeneration(f"stopped early, same validation errors again: {describe(errors)}")
        previous, kind = errors, "reask"
        best = data if isinstance(data, dict) else best
        failed = dumps(data) if data is not None else reply.raw or dumps({})
        messages = reask_messages(convo.base, failed_output=failed, errors=[str(e) for e in errors])
    errors_left = describe(convo.result.validation_errors)
    raise StopGeneration(
        f"output invalid after {convo.policy.max_attempts} attempts: {errors_left}"
    )


# --- Moderation ----------------------------------------------------------------------------------
def _moderated(convo: _Conversation, data: dict[str, Any], *, retry: bool) -> dict[str, Any]:
    """Moderate valid output. Flagged output is asked for once more through the re-ask path,
    with the categories as feedback; flagged again (or not repairable), it is kept but held for
    staff review (`result.moderation`)."""
    if convo.spec.moderator is None or convo.spec.review is not None:
        return data
    verdict = convo.moderate(data)
    if verdict.flagged and retry:
        feedback = flagged_feedback(verdict.categories)
        messages = reask_messages(convo.base, failed_output=dumps(data), errors=[feedback])
        try:
            data = _whole(convo, messages, "reask")
            verdict = convo.moderate(data)
        except StopGeneration:
            pass  # no valid rewrite: the flagged output is held
    convo.result.moderation = "held" if verdict.flagged else "passed"
    convo.result.moderation_categories = list(verdict.categories)
    return data


def _run(convo: _Conversation, body: Callable[[], dict[str, Any]]) -> GenerationResult:
    result = convo.result
    try:
        result.data = body()
        result.validation_errors = []
    except CircuitOpenError as exc:
        result.defer_s, result.error = exc.retry_after, str(exc)
    except TransientProviderError as exc:  # retries exhausted: the provider is down, not the task
        result.defer_s = exc.retry_after or settings.COURSEGEN_TASK_DEFER_MAX_S
        result.error = public_error("provider unavailable", exc)
    except DeadlineError as exc:
        result.defer_s, result.error = 0.0, str(exc)
    except SoftTimeLimitExceeded:  # prefork's backstop cut a call short: paid, kept, deferred
        result.defer_s, result.error = 0.0, "soft time limit reached"
    except LeaseLostError as exc:
        result.lease_lost, result.error = True, str(exc)
    except ProviderError as exc:
        result.error = public_error("provider error", exc)
    except StopGeneration as exc:
        result.error = str(exc)
    except BatchRepairNeeded as exc:  # not an outcome: the run goes on when the line answers
        result.batch_request, result.error = exc.request, "a repair waits for the next batch"
    except INFRASTRUCTURE_ERRORS as exc:  # our database or Redis blinked: try again later
        logger.warning("task deferred after an infrastructure error: %r", exc)
        result.defer_s = INFRASTRUCTURE_RETRY_S
        result.error = public_error("infrastructure error", exc)
    except Exception as exc:  # a bug: fail the task, but keep the ledger of the calls made
        logger.exception("task crashed")
        result.error = public_error("internal error", exc)
    return result


def generate(
    spec: TaskSpec,
    provider: Provider,
    policy: ReaskPolicy | None = None,
    *,
    batch: BatchReplay | None = None,
) -> GenerationResult:
    """Run one task: its output, or the reason it failed, and every attempt either way.
    `batch` holds Batch API lines' answers: the first request's is taken instead of that call
    (attempt kind `batch`), each later one instead of a repair's call (its own kind), all at the
    batch price, and validated, repaired and moderated as live replies would be."""
    convo = _Conversation(spec, provider, policy or ReaskPolicy.from_settings(), batch)
    return _run(convo, lambda: _moderated(convo, _whole(convo), retry=True))


def first_request(spec: TaskSpec, provider: Provider) -> CompletionRequest:
    """The request a run's first call sends: what a batch line asks for."""
    convo = _Conversation(spec, provider, ReaskPolicy.from_settings())
    return convo.request_for(convo.base, schema=convo.schema)


def regenerate_part(
    spec: TaskSpec,
    provider: Provider,
    *,
    data: dict[str, Any],
    part: str,
    errors: Sequence[FieldError],
    extra: ExtraCheck | None = None,
    hints: Sequence[str] = (),
    context: Mapping[str, Any] | None = None,
    policy: ReaskPolicy | None = None,
    batch: BatchReplay | None = None,
) -> GenerationResult:
    """Regenerate one part of a finished output (e.g. a question that duplicates another lesson's)
    and return the whole output with it merged. `extra` adds checks the task alone cannot make.
    With no whole object to fall back on, the part request itself gets up to `max_attempts`
    rounds, and stops early when a round ends with the previous round's errors. `batch`: Batch
    API lines' answers, as for `generate`."""
    convo = _Conversation(spec, provider, policy or ReaskPolicy.from_settings(), batch)

    def body() -> dict[str, Any]:
        previous: list[dict[str, str]] | None = None
        for _ in range(convo.policy.max_attempts):
            value = _repair_part(
                convo, data, part, errors, extra=extra, hints=hints, context=context
            )
            if value is not None:  # a part has no whole re-ask to fall back on: held if flagged
                return _moderated(convo, parts.merge(data, part, value), retry=False)
            latest = convo.result.attempts[-1].errors if convo.result.attempts else []
            convo.result.validation_errors = latest or [e.as_dict() for e in errors]
            if latest == previous:
                break
            previous = latest
        raise StopGeneration(f"could not regenerate {part}: {describe(latest or errors)}")

    return _run(convo, body)
