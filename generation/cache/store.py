"""Looking a task up in the cache, and storing what a task produced (docs/cache.md).

A hit is recorded as the task's attempt of kind `cache`: no provider call, cost 0, with the cost
and the time the entry's generation had taken as what the hit saved. Only outputs that passed
validation (and moderation) and score at least COURSEGEN_CACHE_MIN_QUALITY are stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Organisation
from generation import checks
from generation.cache import keys, similar, vectors
from generation.cache_models import CacheEntry
from generation.llm import AttemptRecord, GenerationResult, TaskSpec
from generation.models import GenerationTask
from generation.prompts import task_context
from generation.providers.base import Usage
from generation.schemas import TASK_TIERS, CourseRequest, Question, TaskKind, Tier
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")
CACHE_KIND = "cache"  # AttemptKind.CACHE
_QUALITY_PER_INVALID_REPLY = 0.25


@dataclass(frozen=True)
class CacheKey:
    """Everything a lookup filters on, for one task."""

    kind: TaskKind
    key_hash: str
    prompt_version: str
    schema_hash: str
    tier: str
    model: str
    language: str
    level: str
    audience_band: str
    context: dict[str, Any]

    def exact_fields(self) -> dict[str, str]:
        return {
            "kind": self.kind.value,
            "prompt_version": self.prompt_version,
            "schema_hash": self.schema_hash,
            "model": self.model,
            "language": self.language,
            "level": self.level,
            "audience_band": self.audience_band,
        }


def cache_applies(*, task: GenerationTask) -> bool:
    """Cached kinds, while the cache is on. Tasks of an A/B experiment variant neither read nor
    write it, so that an experiment's arms measure generation."""
    return (
        settings.COURSEGEN_CACHE_ENABLED
        and task.task_kind in keys.CACHED_KINDS
        and task.variant_id is None
    )


def cache_key_for(spec: TaskSpec) -> CacheKey:
    context = keys.cache_context(dict(spec.context))
    version = keys.current_prompt_version(spec.kind, spec.prompt_version)
    return CacheKey(
        kind=spec.kind,
        key_hash=keys.key_hash(
            kind=spec.kind, prompt_version=version, model=spec.model, context=context
        ),
        prompt_version=version,
        schema_hash=keys.schema_hash(spec.kind),
        tier=spec.tier.value,
        model=spec.model,
        language=spec.request.language,
        level=spec.request.level.value,
        audience_band=keys.audience_band(spec.request.audience),
        context=context,
    )


def outline_key(request: CourseRequest) -> CacheKey:
    """The key of a course request's outline, as its outline task would look it up (for
    `cache_match` and `bench_cache`, which have no task)."""
    kind, tier = TaskKind.OUTLINE, TASK_TIERS[TaskKind.OUTLINE]
    model = (
        settings.COURSEGEN_MODEL_COMPLEX
        if tier is Tier.COMPLEX
        else settings.COURSEGEN_MODEL_SIMPLE
    )
    context = task_context(kind, "course", request=request, outline=None)
    spec = TaskSpec(
        kind=kind, tier=tier, model=model, request=request, outline=None, context=context
    )
    return cache_key_for(spec)


def _scope(organisation: Organisation) -> Q:
    """The entries an organisation may be served: its own, and, when it shares its cache, those
    other organisations stored as shared and still share (one that turns sharing off takes its
    entries, and the instructions in their contexts, back at once, not when they expire). While
    moderation is on, only output it passed: a hit is not moderated again, so an entry stored
    unmoderated (moderation off at the time) would be published unchecked."""
    scope = Q(organisation=organisation)
    if organisation.share_generation_cache:
        scope |= Q(shared=True, organisation__share_generation_cache=True)
    if settings.COURSEGEN_MODERATION_PROVIDER != "off":
        scope &= Q(moderation="passed")
    return scope


@dataclass
class Found:
    """A lookup's outcome: the entry (None on a miss), the layer that found it, and the
    similarity layer's best score and refusals (so the threshold can be tuned from the logs)."""

    entry: CacheEntry | None
    layer: str | None  # "exact" | "similar" | None
    similar: similar.Match | None = None


def cache_find(*, key: CacheKey, organisation: Organisation) -> Found:
    """The exact layer, then the similarity layer (unless COURSEGEN_EMBEDDING_PROVIDER=off). A
    hit slides the entry's expiry."""
    entry = _exact_match(key, organisation)
    if entry is not None:
        _hit_record(entry)
        return Found(entry, "exact")
    match = similar.similar_match(
        exact_fields=key.exact_fields(), context=key.context, scope=_scope(organisation)
    )
    if match.entry is not None:
        _hit_record(match.entry)
        return Found(match.entry, "similar", match)
    return Found(None, None, match)


def cache_lookup(*, task: GenerationTask, spec: TaskSpec) -> GenerationResult | None:
    """The cached output for the task as a finished run (one attempt of kind `cache`), or None.
    A database error is a miss: the task is generated."""
    started = time.monotonic()
    key = cache_key_for(spec)
    try:
        found = cache_find(key=key, organisation=task.job.organisation)
    except DatabaseError:
        logger.warning("cache lookup failed for task %s; generating", task.pk, exc_info=True)
        return None
    lookup_ms = round((time.monotonic() - started) * 1000)
    _lookup_log(task=task, key=key, found=found, lookup_ms=lookup_ms)
    entry = found.entry
    if entry is None:
        return None
    attempt = AttemptRecord(
        number=1,
        kind=CACHE_KIND,
        outcome="ok",
        model=entry.model,
        usage=Usage(),
        cost_usd=Decimal(0),
        latency_ms=lookup_ms,
        saved_cost_usd=entry.cost_usd,
        saved_ms=entry.duration_ms,
    )
    return GenerationResult(data=entry.output, attempts=[attempt], moderation=entry.moderation)


def _exact_match(key: CacheKey, organisation: Organisation) -> CacheEntry | None:
    candidates = CacheEntry.objects.filter(
        _scope(organisation),
        key_hash=key.key_hash,
        expires_at__gt=timezone.now(),
        **key.exact_fields(),
    )
    # Its own organisation's entry first, then the best one shared.
    own = candidates.filter(organisation=organisation).first()
    return own or candidates.order_by("-quality", "-created_at").first()


def _ttl(kind: str) -> timedelta:
    return timedelta(days=settings.COURSEGEN_CACHE_TTL_DAYS[kind])


def _hit_record(entry: CacheEntry) -> None:
    now = timezone.now()
    CacheEntry.objects.filter(pk=entry.pk).update(
        hits=F("hits") + 1, last_hit_at=now, expires_at=now + _ttl(entry.kind)
    )


def _lookup_log(*, task: GenerationTask, key: CacheKey, found: Found, lookup_ms: int) -> None:
    entry, match = found.entry, found.similar
    outcome = f"hit ({found.layer})" if entry else "miss"
    if match is not None and match.score is not None:
        outcome += f", best similarity {match.score:.3f}"
        if entry is None and match.rejected_by:
            outcome += f" refused by {match.rejected_by}"
    log_event(
        "cache.hit" if entry else "cache.miss",
        f"{task.kind} {task.key}: cache {outcome}",
        job=task.job,
        task=task,
        duration_ms=lookup_ms,
        data={
            "layer": found.layer,
            "key_hash": key.key_hash,
            "entry_id": entry.pk if entry else None,
            "saved_cost_usd": str(entry.cost_usd) if entry else "0",
            "saved_ms": entry.duration_ms if entry else 0,
            "best_score": match.score if match else None,
            "rejected_by": match.rejected_by if match else None,
            "candidates": match.candidates if match else 0,
            "search": match.search if match else None,
            "rejections": match.rejections if match else [],
        },
    )


# --- Storing ---------------------------------------------------------------------------
def output_quality(*, kind: TaskKind, data: dict[str, Any], result: GenerationResult) -> float:
    """A task-level quality score (0-1) from what is known when the task ends: each reply that
    failed validation costs a quarter, and an assessment loses the share of its questions that
    give their answer away (generation/checks.py)."""
    invalid = sum(1 for a in result.attempts if a.outcome == "invalid")
    score = max(0.0, 1.0 - _QUALITY_PER_INVALID_REPLY * invalid)
    if kind is TaskKind.ASSESSMENT:
        questions = [Question.model_validate(q) for q in data.get("questions", [])]
        flawed = sum(1 for i, q in enumerate(questions) if checks.question_flaws(i, q))
        score *= 1.0 - flawed / len(questions) if questions else 1.0
    return round(score, 4)


def cache_entry_store(
    *, task: GenerationTask, spec: TaskSpec, result: GenerationResult, wall_s: float
) -> CacheEntry | None:
    """Keep a succeeded task's output for reuse when it is good enough; None when it is not
    (or an entry for the same key and organisation exists already). Never raises for a
    database error: the task's own result is recorded already."""
    if result.data is None or result.moderation not in ("", "passed"):
        return None
    quality = output_quality(kind=spec.kind, data=result.data, result=result)
    if quality < settings.COURSEGEN_CACHE_MIN_QUALITY:
        return None
    return cache_entry_put(
        key=cache_key_for(spec),
        organisation=task.job.organisation,
        output=result.data,
        moderation=result.moderation,
        quality=quality,
        cost_usd=result.cost_usd,
        duration_ms=round(wall_s * 1000),
        source_task=task,
    )


def cache_entry_put(
    *,
    key: CacheKey,
    organisation: Organisation,
    output: dict[str, Any],
    quality: float,
    cost_usd: Decimal,
    duration_ms: int,
    moderation: str = "",
    source_task: GenerationTask | None = None,
) -> CacheEntry | None:
    """Store one entry with its embedding (none when embeddings are off or fail: the exact
    layer still serves it). None when the key is stored for the organisation already."""
    embedding = similar.embedding_for(key.context)
    text, model, vector = embedding if embedding else ("", "", None)
    try:
        with transaction.atomic():
            entry = CacheEntry.objects.create(
                key_hash=key.key_hash,
                organisation=organisation,
                shared=organisation.share_generation_cache,
                tier=key.tier,
                context=key.context,
                shape_hash=similar.shape_hash(key.context),
                embedded_text=text,
                embedding=vector,
                embedding_model=model,
                output=output,
                moderation=moderation,
                quality=quality,
                cost_usd=cost_usd,
                duration_ms=duration_ms,
                source_task=source_task,
                expires_at=timezone.now() + _ttl(key.kind),
                **key.exact_fields(),
            )
            if vector is not None:
                vectors.vectors_store([(entry.pk, vector)])
            return entry
    except IntegrityError:
        return None  # stored already (another job of the same request got there first)
    except DatabaseError:
        logger.warning("cache store failed for %s", key.key_hash, exc_info=True)
        return None
