"""The data of one task's conversation with the provider (generation/llm.py): the re-ask
policy, what a run is asked (`TaskSpec`, `Review`), and what it returns (`GenerationResult`
with one `AttemptRecord` per provider call). Kept apart so the conversation module stays
readable; generation.llm re-exports every name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from pydantic import BaseModel

from generation.providers.base import CompletionRequest, Message, Provider, Usage
from generation.schemas import CourseOutline, CourseRequest, TaskKind, Tier

REPAIR_KINDS = ("reask", "part")


@dataclass(frozen=True)
class ReaskPolicy:
    max_attempts: int  # per request: the whole object, or one part
    token_budget: int  # per run of a task: every request together

    @classmethod
    def from_settings(cls) -> ReaskPolicy:
        return cls(
            max_attempts=settings.COURSEGEN_MAX_VALIDATION_ATTEMPTS,
            token_budget=settings.COURSEGEN_TASK_TOKEN_BUDGET,
        )


class StopGeneration(Exception):
    """The policy ended the run; the message says why."""


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
    part: str = ""  # the part requested (questions.2); empty for the whole object
    saved_cost_usd: Decimal = Decimal(0)  # a cache hit: what generating the output had cost
    saved_ms: int = 0  # a cache hit: how long generating it had taken
    batch: bool = False  # answered by a Batch API line: priced at the batch discount

    @property
    def is_repair(self) -> bool:
        """Spent on repairing output: a re-ask, a part request, or any failed call."""
        return self.kind in REPAIR_KINDS or self.outcome != "ok"


@dataclass
class GenerationResult:
    data: dict[str, Any] | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    error: str = ""
    validation_errors: list[dict[str, str]] = field(default_factory=list)
    # Set when the provider could not be reached now: reschedule the task after this many seconds.
    defer_s: float | None = None
    lease_lost: bool = False
    moderation: str = ""  # ModerationStatus: "" not moderated, "passed" or "held"
    moderation_categories: list[str] = field(default_factory=list)
    # Set when the run stopped for a repair that goes into the next batch (BatchReplay): the
    # request its line must send.
    batch_request: CompletionRequest | None = None

    @property
    def ok(self) -> bool:
        return self.data is not None

    def total(self, name: str) -> int:
        return sum(getattr(a.usage, name) for a in self.attempts)

    @property
    def cost_usd(self) -> Decimal:
        return sum((a.cost_usd for a in self.attempts), Decimal(0))

    @property
    def reask_cost_usd(self) -> Decimal:
        return sum((a.cost_usd for a in self.attempts if a.is_repair), Decimal(0))


@dataclass(frozen=True)
class Review:
    """A request that reviews content instead of writing it (the quality judge): its own
    messages and output schema, through the same breaker, limiter, retries and re-asks; every
    call is recorded as attempt kind `judge`. An invalid verdict is re-asked whole."""

    messages: tuple[Message, ...]
    schema: type[BaseModel]


@dataclass
class TaskSpec:
    kind: TaskKind
    tier: Tier
    model: str
    request: CourseRequest
    outline: CourseOutline | None
    context: Mapping[str, Any]
    instruction: str = ""  # a teacher's wish for a regenerated version ("simpler examples")
    prompt_version: str = ""  # the task template's version (generation/prompts.py); "" default
    review: Review | None = None  # set for a judge request: `kind` is then what is judged
    # Renews the task's lease before each call; False means another worker owns the task now.
    heartbeat: Callable[[], bool] | None = None
    deadline: float | None = None  # time.monotonic() after which no new call starts
    fallback_model: str | None = None  # the other tier's model, while this one's breaker is open
    moderator: Provider | None = None  # checks the output (docs/safety.md); None: not checked
    moderation_model: str = ""
    # The calls' place in line when the provider's limit binds (concurrency.call_rank); None:
    # a NORMAL call arriving now.
    rank: float | None = None


@dataclass(frozen=True)
class BatchReplay:
    """What Batch API lines answered for this run (docs/batch.md), in the order the
    conversation asks: the first request's answer, then each repair's. The first `recorded` of
    them are in the ledger already (an earlier run stopped after them): replayed, not recorded
    again. `repairs_by_batch`: a repair the answers do not cover stops the run
    (BatchRepairNeeded) instead of a live call (COURSEGEN_BATCH_REPAIR)."""

    answers: tuple[Any, ...]  # Completion | InvalidOutputError, one per line
    recorded: int = 0
    repairs_by_batch: bool = False


class BatchRepairNeeded(Exception):
    """A repair of a batch answer goes into the next batch: the request its line sends."""

    def __init__(self, request: CompletionRequest) -> None:
        super().__init__("a repair goes into the next batch")
        self.request = request


class LeaseLostError(Exception):
    pass


class DeadlineError(Exception):
    pass
