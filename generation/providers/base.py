"""The one provider seam: a request in, a completion out, errors classified.

Every vendor module (offline/, openai.py) implements `Provider.complete`. Callers never see a
vendor exception: transport trouble is `TransientProviderError` (retry with backoff) or
`PermanentProviderError` (fail fast), and output that is not JSON is `InvalidOutputError` (re-ask).
Schema validation happens above this seam, in generation/validation.py.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from generation.schemas import TaskKind, Tier


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class CompletionRequest:
    messages: tuple[Message, ...]
    schema: type[BaseModel]
    model: str
    tier: Tier
    task_kind: TaskKind
    # Structured facts about the task (topic, module/lesson index, outline titles ...). Real
    # providers ignore it; the offline simulator builds its content from it.
    context: Mapping[str, Any] = field(default_factory=dict)
    max_output_tokens: int | None = None
    # "generate" writes course content; "judge" reviews it (the quality judge: `task_kind` is
    # then the kind of what is judged). Real providers ignore it; the offline simulator answers
    # a judge request with its simulated verdict.
    purpose: str = "generate"
    # The schema to enforce where a server compiles it into a grammar (and to show in the
    # prompt): the output model's, with the bounds that make a reply finish
    # (generation/output_bounds.py). None: the output model's own schema.
    json_schema: Mapping[str, Any] | None = None

    @property
    def schema_name(self) -> str:
        return self.schema.__name__


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0  # part of input_tokens served from the provider's prompt cache
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Completion:
    data: dict[str, Any]  # parsed JSON object; not yet validated against the schema
    raw_text: str
    usage: Usage
    latency_s: float
    model: str
    provider: str
    headers: Mapping[str, str] = field(default_factory=dict)
    constraint: str = ""  # the openai provider's ConstraintStep for this call; "" elsewhere


class ProviderError(Exception):
    """Base for every error a provider raises; `usage` is what the failed call still cost."""

    def __init__(self, message: str, *, usage: Usage | None = None, latency_s: float = 0.0):
        super().__init__(message)
        self.usage = usage or Usage()
        self.latency_s = latency_s


class TransientProviderError(ProviderError):
    """429, 5xx, timeouts, connection errors: worth retrying after a wait."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        usage: Usage | None = None,
        latency_s: float = 0.0,
    ):
        super().__init__(message, usage=usage, latency_s=latency_s)
        self.retry_after = retry_after
        self.status_code = status_code


class PermanentProviderError(ProviderError):
    """400, 401, 403, 404: retrying cannot help; the task fails with this message."""

    def __init__(self, message: str, *, status_code: int | None = None, usage: Usage | None = None):
        super().__init__(message, usage=usage)
        self.status_code = status_code


class InvalidOutputError(ProviderError):
    """The call succeeded but its text is not a JSON object; the pipeline re-asks."""

    def __init__(
        self, message: str, *, raw_text: str, usage: Usage | None = None, latency_s: float = 0.0
    ):
        super().__init__(message, usage=usage, latency_s=latency_s)
        self.raw_text = raw_text


class Provider(abc.ABC):
    name: str = "base"

    @abc.abstractmethod
    def complete(self, request: CompletionRequest) -> Completion:
        """Run one call. Raises only the ProviderError subclasses above."""

    def moderate(self, request: ModerationRequest) -> ModerationResult:
        """Classify text against the content-safety categories (MODERATION_CATEGORIES).
        Providers without a moderation endpoint refuse, permanently."""
        raise PermanentProviderError(f"the {self.name} provider has no moderation endpoint")

    def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed texts (the content cache's similarity layer). Providers without an embeddings
        endpoint refuse, permanently."""
        raise PermanentProviderError(f"the {self.name} provider has no embeddings endpoint")

    # --- The Batch API (docs/batch.md): a file of requests answered within a day, at half the
    # price. Providers without one refuse, permanently.
    def batch_upload(self, lines: Sequence[BatchLine], *, filename: str = "batch.jsonl") -> str:
        """Upload the requests as one JSONL file (purpose "batch"); its file id."""
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")

    def batch_file_find(self, filename: str, *, since: float) -> str | None:
        """The id of a batch input file of this name uploaded after `since` (epoch seconds):
        an upload whose answer a killed process never recorded."""
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")

    def batch_find(self, key: str, *, since: float) -> BatchState | None:
        """The batch created after `since` whose metadata `coursegen_key` is `key`, if any: a
        creation whose answer a killed process never recorded (adopted, never made twice)."""
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")

    def batch_create(self, *, input_file_id: str, metadata: Mapping[str, str]) -> BatchState:
        """Start a batch over an uploaded file (endpoint /v1/chat/completions, window 24h)."""
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")

    def batch_retrieve(self, batch_id: str) -> BatchState:
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")

    def batch_results(self, state: BatchState) -> list[BatchLineResult]:
        """The lines of an ended batch's output and error files, mapped by custom_id."""
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")

    def batch_cancel(self, batch_id: str) -> BatchState:
        raise PermanentProviderError(f"the {self.name} provider has no Batch API")


# --- The Batch API ------------------------------------------------------------------------------
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")  # the provider's final states
BATCH_KEY = "coursegen_key"  # the metadata a batch is found by (batch_find)


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch: a task attempt under its `custom_id`."""

    custom_id: str
    request: CompletionRequest


@dataclass(frozen=True)
class BatchState:
    id: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling ...
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: str = ""  # why a whole batch failed (validation)

    @property
    def ended(self) -> bool:
        return self.status in BATCH_ENDED


@dataclass(frozen=True)
class BatchLineResult:
    """One line of an ended batch: a completion, or why there is none (`error`, with the
    provider's code: `batch_expired` for a line unanswered at expiry, `batch_cancelled` ...).
    `response` is the line's response body as received, kept on the request row."""

    custom_id: str
    completion: Completion | None = None
    error: ProviderError | None = None
    code: str = ""
    response: Mapping[str, Any] | None = None


# --- Moderation -----------------------------------------------------------------------------------
# Our categories; each vendor maps its own onto these (openai.py: OpenAI's "illicit" is
# "dangerous", "harassment/threatening" is "harassment" ...).
MODERATION_CATEGORIES = ("hate", "harassment", "violence", "sexual", "self_harm", "dangerous")


@dataclass(frozen=True)
class ModerationRequest:
    texts: tuple[str, ...]  # checked together: flagged when any of them is
    model: str


@dataclass(frozen=True)
class ModerationResult:
    flagged: bool
    categories: tuple[str, ...]  # the flagged ones, in MODERATION_CATEGORIES order
    scores: Mapping[str, float]  # the highest score per category over the texts
    model: str
    provider: str
    latency_s: float
    per_text: tuple[tuple[str, ...], ...] = ()  # each text's flagged categories, in order


# --- Embeddings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    model: str


@dataclass(frozen=True)
class EmbeddingResult:
    # One row per text, float32, L2-normalised (so a dot product is the cosine).
    vectors: NDArray[np.float32]
    model: str  # the model's name and version: vectors of different models never compare
    provider: str
    latency_s: float
    usage: Usage = field(default_factory=Usage)
