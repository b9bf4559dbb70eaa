"""OpenAI (and OpenAI-compatible servers) behind the provider seam.

One chat completion per call, asking each server for the strongest output constraint it supports,
down a ladder (generation.schemas.ConstraintStep), strongest first:

1. `json_schema`, strict: Structured Outputs built from the task's pydantic model (OpenAI, vLLM,
   Ollama);
2. `json_object` with the schema inside `response_format`: llama.cpp's server compiles it into a
   grammar, so even a small model's reply keeps to the schema;
3. plain `json_object`, the schema only in the prompt: nothing is enforced.

A refusal (a 4xx saying the format is unsupported, or llama.cpp's 500 for `json_schema`) moves one
step down; the step that works is kept per (base URL, model) in a `ConstraintStore` (the
ProviderConstraint table when built from settings), so later calls start there. The SDK never
retries: our retry policy sits above this seam and needs every failure classified, not hidden.
"""

from __future__ import annotations

import copy
import dataclasses
import email.utils
import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from generation.providers.base import (
    MODERATION_CATEGORIES,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResult,
    InvalidOutputError,
    ModerationRequest,
    ModerationResult,
    PermanentProviderError,
    Provider,
    ProviderError,
    TransientProviderError,
    Usage,
)
from generation.providers.constraints import (
    PROCESS_CONSTRAINTS,
    ConstraintStore,
    DatabaseConstraints,
)
from generation.providers.openai_batch import OpenAIBatches
from generation.schemas import CONSTRAINT_LADDER, ConstraintStep

if TYPE_CHECKING:
    from openai._legacy_response import LegacyAPIResponse

    RawChatResponse = LegacyAPIResponse[ChatCompletion]

logger = logging.getLogger("coursegen.providers.openai")

OFFICIAL_BASE_URL = "https://api.openai.com/v1"
# OpenAI-compatible local servers ignore the key, but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "not-needed"
_MAX_MESSAGE_CHARS = 500

# --- strict JSON schema -------------------------------------------------------------------------
# Keywords OpenAI strict mode accepts. Anything else (title, default, minLength, maxLength,
# uniqueItems, examples ...) is rejected or ignored there; local pydantic validation still
# enforces every constraint, so dropping them only loosens the server-side grammar.
_STRICT_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "anyOf", "$ref", "$defs", "description", "pattern", "format", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
    }
)  # fmt: skip
_STRICT_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
_SCHEMA_MAPS = ("properties", "$defs")  # values map names to sub-schemas
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # values are lists of sub-schemas


SchemaFn = Callable[[dict[str, Any]], dict[str, Any]]


def _map_subschemas(node: dict[str, Any], fn: SchemaFn) -> dict[str, Any]:
    """A copy of `node` with `fn` applied to each direct sub-schema (never to property names)."""
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: fn(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [fn(sub) for sub in out[key]]
    if isinstance(out.get("items"), dict):
        out["items"] = fn(out["items"])
    return out


def _strict_node(node: dict[str, Any]) -> dict[str, Any]:
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        # Older pydantic wraps a lone $ref in allOf to attach a default; unwrap it.
        node = {**{k: v for k, v in node.items() if k != "allOf"}, **all_of[0]}
    if "$ref" in node:
        # Strict mode rejects siblings of $ref; the referenced definition carries the meaning.
        return {"$ref": node["$ref"]}
    out = {k: v for k, v in _map_subschemas(node, _strict_node).items() if k in _STRICT_KEYWORDS}
    if out.get("format") not in _STRICT_FORMATS:
        out.pop("format", None)
    if out.get("type") == "object" or "properties" in out:
        # Strict mode: no extra keys and every property required (defaults cannot be expressed).
        out["properties"] = out.get("properties", {})
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


@functools.cache
def _strict_schema_cached(model: type[BaseModel]) -> dict[str, Any]:
    return _strict_node(model.model_json_schema())


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema in the subset OpenAI Structured Outputs accepts with strict=True."""
    return copy.deepcopy(_strict_schema_cached(model))


def _drop_titles(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _map_subschemas(node, _drop_titles).items() if k != "title"}


@functools.cache
def prompt_schema_text(model: type[BaseModel]) -> str:
    """The full schema as compact JSON for the prompt; keeps minLength etc. as hints."""
    return json.dumps(_drop_titles(model.model_json_schema()), separators=(",", ":"))


def _schema_name(model: type[BaseModel]) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", model.__name__)[:64]


# --- request building ---------------------------------------------------------------------------
@functools.cache
def _grammar_schema_cached(model: type[BaseModel]) -> dict[str, Any]:
    return _drop_titles(model.model_json_schema())


def grammar_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The schema sent inside a `json_object` response_format: the full JSON schema (lengths and
    bounds included: llama.cpp's grammar enforces them too), without titles."""
    return copy.deepcopy(_grammar_schema_cached(model))


def _messages(request: CompletionRequest, *, step: ConstraintStep) -> list[dict[str, str]]:
    messages = [m.as_dict() for m in request.messages]
    if step is ConstraintStep.JSON_SCHEMA:
        return messages
    # The schema is in the prompt for both json_object steps: with a grammar it still tells the
    # model what each field is for; without one it is all the model has.
    schema = (
        json.dumps(request.json_schema, separators=(",", ":"))
        if request.json_schema is not None
        else prompt_schema_text(request.schema)
    )
    instruction = f"Reply with one JSON object that matches this JSON schema: {schema}"
    system = next((m for m in messages if m["role"] == "system"), None)
    if system is None:
        return [{"role": "system", "content": instruction}, *messages]
    system["content"] = f"{system['content']}\n\n{instruction}"
    return messages


def _response_format(request: CompletionRequest, *, step: ConstraintStep) -> dict[str, Any]:
    if step is ConstraintStep.JSON_OBJECT:
        return {"type": "json_object"}
    if step is ConstraintStep.JSON_OBJECT_SCHEMA:
        given = request.json_schema
        schema = copy.deepcopy(dict(given)) if given is not None else grammar_schema(request.schema)
        return {"type": "json_object", "schema": schema}
    json_schema = {
        "name": _schema_name(request.schema),
        "strict": True,
        "schema": strict_schema(request.schema),
    }
    return {"type": "json_schema", "json_schema": json_schema}


# --- error classification -----------------------------------------------------------------------
def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date), or None."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name) or "nan") * scale
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if parsed is None:
        return None
    return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own explanation (the SDK already unwrapped the `error` envelope)."""
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message")
        return message if isinstance(message, str) and message else json.dumps(body)
    if isinstance(body, str) and body:
        return body
    return exc.message


# Words in a 4xx that say a response_format is not supported (rather than that our request is
# wrong in some other way).
_UNSUPPORTED_WORDS = ("unsupported", "not supported", "not implemented", "unknown", "unrecognized",
                      "not permitted", "not allowed", "extra", "unexpected", "invalid value",
                      "input should be")  # fmt: skip
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema")


def refuses_step(step: ConstraintStep, exc: openai.APIStatusError) -> bool:
    """True when the server does not support this constraint step (not when our schema is
    invalid, nor for any other failure)."""
    message = _server_message(exc)
    lowered = message.lower()
    if exc.status_code == 500:
        # llama.cpp validates response_format with pydantic and answers 500 to `json_schema`.
        return step is ConstraintStep.JSON_SCHEMA and "Input should be 'text' or 'json_object'" in (
            message
        )
    if exc.status_code == 501:
        return True
    if exc.status_code not in (400, 404, 415, 422):
        return False
    # OpenAI rejects a bad schema with 400 "Invalid schema for response_format ..."; moving down
    # would hide our own bug behind a weaker mode, so that stays a permanent error.
    if "invalid schema" in lowered:
        return False
    mentions_format = any(word in lowered for word in _FORMAT_WORDS)
    return mentions_format and any(word in lowered for word in _UNSUPPORTED_WORDS)


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Only what the rate limiter and retry policy use; the rest is noise in the job log."""
    kept = {k.lower(): v for k, v in headers.items()}
    return {k: v for k, v in kept.items() if k.startswith(("x-ratelimit-", "retry-after"))}


# --- the provider -------------------------------------------------------------------------------
class OpenAIProvider(OpenAIBatches, Provider):
    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout_s: float,
        max_retries: int = 0,
        constraints: ConstraintStore | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int = 0,
    ) -> None:
        if not api_key and not base_url:
            raise ValueError("OpenAIProvider needs an API key or a base URL")
        self._api_key = api_key
        self._base_url = (base_url or OFFICIAL_BASE_URL).rstrip("/")
        self._timeout_s = timeout_s
        self._constraints = constraints or PROCESS_CONSTRAINTS
        # Sampling: None leaves the server's default. A small local model wants temperature 0
        # (and a seed), or it wanders off; max_tokens caps a call that names no limit itself.
        self._temperature, self._seed, self._max_tokens = temperature, seed, max_tokens
        self._client = openai.OpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=self._base_url,
            timeout=timeout_s,
            max_retries=max_retries,
        )

    @classmethod
    def from_settings(cls) -> OpenAIProvider:
        from django.conf import settings

        return cls(
            api_key=settings.OPENAI_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            timeout_s=settings.OPENAI_TIMEOUT_S,
            max_retries=settings.OPENAI_MAX_RETRIES,
            constraints=DatabaseConstraints(),
            temperature=settings.OPENAI_TEMPERATURE,
            seed=settings.OPENAI_SEED,
            max_tokens=settings.OPENAI_MAX_TOKENS,
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        try:
            raw, step = self._create_on_ladder(request)
            completion, headers = raw.parse(), _kept_headers(raw.headers)
        except openai.OpenAIError as exc:
            raise self._classify(exc, time.monotonic() - started) from exc
        result = self._to_completion(request, completion, headers, time.monotonic() - started)
        return dataclasses.replace(result, constraint=step.value)

    def moderate(self, request: ModerationRequest) -> ModerationResult:
        """One call of the moderation endpoint (free at OpenAI); its categories in ours."""
        started = time.monotonic()
        try:
            response = self._client.moderations.create(
                model=request.model, input=list(request.texts)
            )
        except openai.OpenAIError as exc:
            raise self._classify(exc, time.monotonic() - started) from exc
        scores = dict.fromkeys(MODERATION_CATEGORIES, 0.0)
        per_text = []
        for result in response.results:
            hits = result.categories.model_dump(by_alias=True)
            found: set[str] = set()
            for name, score in result.category_scores.model_dump(by_alias=True).items():
                ours = _MODERATION_CATEGORY.get(name.split("/")[0])
                if ours is None:
                    continue
                scores[ours] = max(scores[ours], float(score or 0.0))
                if hits.get(name):
                    found.add(ours)
            per_text.append(tuple(c for c in MODERATION_CATEGORIES if c in found))
        flagged = {c for categories in per_text for c in categories}
        return ModerationResult(
            flagged=bool(flagged),
            categories=tuple(c for c in MODERATION_CATEGORIES if c in flagged),
            scores=scores,
            model=response.model or request.model,
            provider=self.name,
            latency_s=time.monotonic() - started,
            per_text=tuple(per_text),
        )

    def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One call of the embeddings endpoint for all the texts; rows L2-normalised."""
        started = time.monotonic()
        try:
            response = self._client.embeddings.create(
                model=request.model, input=list(request.texts), encoding_format="float"
            )
        except openai.OpenAIError as exc:
            raise self._classify(exc, time.monotonic() - started) from exc
        rows = sorted(response.data, key=lambda d: d.index)
        vectors = np.array([row.embedding for row in rows], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return EmbeddingResult(
            vectors=vectors / np.clip(norms, 1e-12, None),
            model=response.model or request.model,
            provider=self.name,
            latency_s=time.monotonic() - started,
            usage=Usage(input_tokens=response.usage.prompt_tokens if response.usage else 0),
        )

    # --- calling --------------------------------------------------------------------------------
    def constraint_step(self, model: str) -> ConstraintStep | None:
        """The step this server settled on for `model`; None before its first successful call."""
        return self._constraints.get(self._base_url, model)

    def _create_on_ladder(
        self, request: CompletionRequest
    ) -> tuple[RawChatResponse, ConstraintStep]:
        """Call at the remembered step (the strongest at first); one step down per refusal."""
        known = self.constraint_step(request.model)
        start = CONSTRAINT_LADDER.index(known) if known else 0
        refusals: list[dict[str, Any]] = []
        for step in CONSTRAINT_LADDER[start:]:
            try:
                raw = self._create(request, step=step)
            except openai.APIStatusError as exc:
                if step is CONSTRAINT_LADDER[-1] or not refuses_step(step, exc):
                    raise
                refusals.append(self._refusal(step, exc))
                continue
            if step is not known:
                self._settle(request.model, step, refusals)
            return raw, step
        raise AssertionError("unreachable: the last step raises or returns")

    def _refusal(self, step: ConstraintStep, exc: openai.APIStatusError) -> dict[str, Any]:
        message = self._redact(_server_message(exc))[:200]
        return {"step": step.value, "status": exc.status_code, "message": message}

    def _settle(self, model: str, step: ConstraintStep, refusals: list[dict[str, Any]]) -> None:
        self._constraints.put(self._base_url, model, step, refusals)
        if refusals:
            refused = ", ".join(f"{r['step']} ({r['status']})" for r in refusals)
            logger.warning(
                "%s refused %s for model %s; using %s for it from now on",
                self._base_url,
                refused,
                model,
                step.value,
            )

    def _create(self, request: CompletionRequest, *, step: ConstraintStep) -> RawChatResponse:
        body = self._body(request, step=step)
        return self._client.chat.completions.with_raw_response.create(**body)

    def _body(self, request: CompletionRequest, *, step: ConstraintStep) -> dict[str, Any]:
        """The chat completion's parameters: a live call's, and a batch line's body."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": _messages(request, step=step),
            "response_format": _response_format(request, step=step),
        }
        limit = request.max_output_tokens or self._max_tokens
        if limit:
            body[self._token_limit_param()] = limit
        if self._temperature is not None:
            body["temperature"] = self._temperature
        if self._seed is not None:
            body["seed"] = self._seed
        return body

    def _token_limit_param(self) -> str:
        # OpenAI deprecated max_tokens (reasoning models reject it); compatible servers such as
        # llama.cpp and Ollama only reliably understand max_tokens.
        return "max_completion_tokens" if self._base_url == OFFICIAL_BASE_URL else "max_tokens"

    # --- results --------------------------------------------------------------------------------
    def _to_completion(
        self,
        request: CompletionRequest,
        completion: ChatCompletion,
        headers: dict[str, str],
        latency_s: float,
    ) -> Completion:
        usage = _usage(completion)
        raw_text = self._message_text(completion, usage, latency_s)
        data = _parse_object(raw_text, usage, latency_s)
        return Completion(
            data=data,
            raw_text=raw_text,
            usage=usage,
            latency_s=latency_s,
            model=completion.model or request.model,
            provider=self.name,
            headers=headers,
        )

    @staticmethod
    def _message_text(completion: ChatCompletion, usage: Usage, latency_s: float) -> str:
        if not completion.choices:
            raise InvalidOutputError(
                "the reply has no choices", raw_text="", usage=usage, latency_s=latency_s
            )
        choice = completion.choices[0]
        if choice.message.refusal:
            raise InvalidOutputError(
                f"the model refused: {choice.message.refusal}",
                raw_text=choice.message.refusal,
                usage=usage,
                latency_s=latency_s,
            )
        text = choice.message.content or ""
        if choice.finish_reason == "length":
            raise InvalidOutputError(
                "the reply was cut off at the output token limit",
                raw_text=text,
                usage=usage,
                latency_s=latency_s,
            )
        return text

    # --- errors ---------------------------------------------------------------------------------
    def _classify(self, exc: openai.OpenAIError, latency_s: float) -> ProviderError:
        if isinstance(exc, openai.APITimeoutError):
            message = f"OpenAI request timed out after {self._timeout_s:g}s"
            return TransientProviderError(message, latency_s=latency_s)
        if isinstance(exc, openai.APIConnectionError):
            message = f"cannot reach {self._base_url}: {exc}"
            return TransientProviderError(self._redact(message), latency_s=latency_s)
        if isinstance(exc, openai.APIStatusError):
            return self._classify_status(exc, latency_s)
        return TransientProviderError(self._redact(f"OpenAI error: {exc}"), latency_s=latency_s)

    def _classify_status(self, exc: openai.APIStatusError, latency_s: float) -> ProviderError:
        status = exc.status_code
        message = self._redact(f"OpenAI {status}: {_server_message(exc)}")
        if status in (400, 401, 403, 404, 422):
            return PermanentProviderError(message, status_code=status)
        return TransientProviderError(
            message,
            retry_after=_retry_after(exc.response.headers),
            status_code=status,
            latency_s=latency_s,
        )

    def _redact(self, message: str) -> str:
        """Bound the message and make sure the API key never reaches logs or the job record."""
        if self._api_key:
            message = message.replace(self._api_key, "[redacted]")
        return message[:_MAX_MESSAGE_CHARS]


# OpenAI's moderation categories (before any "/subcategory") in ours.
_MODERATION_CATEGORY = {
    "hate": "hate",
    "harassment": "harassment",
    "violence": "violence",
    "sexual": "sexual",
    "self-harm": "self_harm",
    "illicit": "dangerous",
}


def _usage(completion: ChatCompletion) -> Usage:
    usage = completion.usage
    if usage is None:  # some compatible servers omit it
        return Usage()
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details and details.cached_tokens else 0
    return Usage(
        input_tokens=usage.prompt_tokens,
        cached_tokens=cached,
        output_tokens=usage.completion_tokens,
    )


def _parse_object(raw_text: str, usage: Usage, latency_s: float) -> dict[str, Any]:
    try:
        data = json.loads(raw_text)
    except json.JSONDecodeError as exc:
        raise InvalidOutputError(
            f"the reply is not JSON: {exc}", raw_text=raw_text, usage=usage, latency_s=latency_s
        ) from None
    if not isinstance(data, dict):
        raise InvalidOutputError(
            f"the reply is JSON but not an object (got {type(data).__name__})",
            raw_text=raw_text,
            usage=usage,
            latency_s=latency_s,
        )
    return data
