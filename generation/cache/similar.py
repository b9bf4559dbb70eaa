"""The similarity layer (docs/cache.md#the-similarity-layer): after an exact miss, an entry whose
request says the same thing in other words is served.

A task's context is split in two. Its free text (the request's topic, audience and the teacher's
instructions) may differ; everything else (kind, level, language, numbers of modules, lessons and
questions, and for a lesson its place and titles in the outline) must be equal, through the
exact filters and the shape hash. Among the candidates left, the cosine between the embeddings of
topic and instructions ranks them (in numpy or by pgvector: generation/cache/vectors.py); from
COURSEGEN_CACHE_SIMILARITY_THRESHOLD on, the guards (generation/cache/guards.py) look at the
words, best candidate first, and the first that passes them all is the hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from numpy.typing import NDArray

from generation.cache import guards, vectors
from generation.cache_models import CacheEntry
from generation.providers import EmbeddingRequest, ProviderError, get_embedding_provider

logger = logging.getLogger("coursegen.generation")

# The request's free text: what the similarity layer compares, not what it filters on.
TEXT_FIELDS = ("topic", "audience", "instructions")
# Candidates above the threshold whose guards are checked, best first.
_GUARDED = 5


def shape_hash(context: dict[str, Any]) -> str:
    """sha256 of a normalised context without its free text."""
    shape = {k: v for k, v in context.items() if k not in TEXT_FIELDS}
    material = json.dumps(shape, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


def embedded_text(context: dict[str, Any]) -> str:
    """What is embedded: the topic without course boilerplate ("an introduction to", "for
    beginners") and the teacher's instructions (the audience has a guard of its own, and its
    band is an exact filter)."""
    topic = guards.strip_boilerplate(str(context.get("topic") or ""))
    return ". ".join(t for t in (topic, str(context.get("instructions") or "")) if t)


def guard_text(context: dict[str, Any]) -> str:
    """What the number and negation guards read: all the free text."""
    return ". ".join(str(context.get(f) or "") for f in TEXT_FIELDS if context.get(f))


# --- Embedding -----------------------------------------------------------------------------------
class _Vectors:
    """The embeddings of recent texts in this process: a job's lesson tasks embed the same
    request text, a store follows its lookup, and the guards embed single words."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._rows: OrderedDict[tuple[str, str], NDArray[np.float32]] = OrderedDict()
        self._versions: dict[str, str] = {}  # model asked for -> the version that answered

    def get(self, texts: list[str]) -> tuple[str, NDArray[np.float32]] | None:
        """(the embedding model's version, one row per text), or None when it cannot embed."""
        embedder = get_embedding_provider()
        if embedder is None:
            return None
        provider, name = embedder
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if (name, t) not in self._rows]
        if missing:
            try:
                result = provider.embed(EmbeddingRequest(texts=tuple(missing), model=name))
            except ProviderError:
                logger.warning("embedding failed; the similarity layer is skipped", exc_info=True)
                return None
            with self._lock:
                self._versions[name] = result.model
                for text, row in zip(missing, result.vectors, strict=True):
                    self._rows[(name, text)] = row
                while len(self._rows) > self._size:
                    self._rows.popitem(last=False)
        with self._lock:
            rows = [self._rows.get((name, t)) for t in texts]
            version = self._versions.get(name, name)
        if any(r is None for r in rows):
            return None  # evicted meanwhile by a very busy process: skip this once
        return version, np.vstack([r for r in rows if r is not None])


_VECTORS = _Vectors()


def embed(texts: list[str]) -> tuple[str, NDArray[np.float32]] | None:
    return _VECTORS.get(texts)


# --- Matching -------------------------------------------------------------------------------
@dataclass
class Match:
    """What a similarity lookup found: the entry served (or None), the best cosine among the
    candidates, and why the best ones were refused."""

    entry: CacheEntry | None = None
    score: float | None = None
    rejected_by: str | None = None  # the best candidate's refusal: a guard or "threshold"
    candidates: int = 0
    search: str | None = None  # how the candidates were found: "numpy" or "pgvector"
    rejections: list[dict[str, Any]] = field(default_factory=list)


def _audience_guard(a: str, b: str) -> str | None:
    return "audience" if guards.overlap(a, b) < 0.5 else None


def _has_unmatched(words: set[str], others: set[str]) -> bool | None:
    """Whether one of `words` has no synonym among `others` (by the words' own embeddings);
    None when they cannot be embedded."""
    left, right = sorted(words), sorted(others)
    embedded = embed(left + right)
    if embedded is None:
        return None
    vectors = embedded[1]
    best = (vectors[: len(left)] @ vectors[len(left) :].T).max(axis=1)
    return bool((best < settings.COURSEGEN_CACHE_WORD_MATCH).any())


def _substitution_guard(a: str, b: str) -> str | None:
    """Refuse when each text has a subject word the other lacks and has no synonym for: one
    subject swapped for another ("lists" / "dictionaries", "Iceland" / "Hawaii"). A word only
    one side adds is left to the threshold and the overlap guard."""
    only_a, only_b = guards.unshared_words(a, b)
    if not only_a or not only_b:
        return None
    words_a = set(guards.content_terms(a).values())
    words_b = set(guards.content_terms(b).values())
    for own, others in ((only_a, words_b), (only_b, words_a)):
        unmatched = _has_unmatched(own, others)
        if unmatched is False:
            return None
    # Both sides have a word the other has no synonym for (or it could not be checked).
    return "substitution"


def refusal(query: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """The first guard that refuses serving `candidate`'s entry for `query` (both normalised
    contexts), or None."""
    full_q, full_c = guard_text(query), guard_text(candidate)
    text_q, text_c = embedded_text(query), embedded_text(candidate)
    checks = (
        guards.instructions_guard(
            str(query.get("instructions") or ""), str(candidate.get("instructions") or "")
        ),
        guards.number_guard(full_q, full_c),
        guards.negation_guard(full_q, full_c),
        guards.make_overlap_guard(settings.COURSEGEN_CACHE_MIN_OVERLAP)(text_q, text_c),
        _audience_guard(str(query.get("audience", "")), str(candidate.get("audience", ""))),
    )
    found = next((c for c in checks if c), None)
    return found or _substitution_guard(text_q, text_c)


def similar_match(*, exact_fields: dict[str, str], context: dict[str, Any], scope: Q) -> Match:
    """The best entry within `scope` that passes the threshold and every guard."""
    embedded = embed([embedded_text(context)])
    if embedded is None:
        return Match(rejected_by="no_embedding")
    model, query = embedded
    candidates = CacheEntry.objects.filter(
        scope,
        shape_hash=shape_hash(context),
        embedding_model=model,
        embedding__isnull=False,
        expires_at__gt=timezone.now(),
        **exact_fields,
    )
    found = vectors.nearest(candidates, query[0], limit=_GUARDED)
    if not found.rows:
        return Match(search=found.backend)
    match = Match(score=round(found.rows[0][1], 4), candidates=found.scored, search=found.backend)
    threshold = settings.COURSEGEN_CACHE_SIMILARITY_THRESHOLD
    best = [(pk, score) for pk, score in found.rows if score >= threshold]
    if not best:
        match.rejected_by = "threshold"
        return match
    entries = CacheEntry.objects.in_bulk([pk for pk, _ in best])
    for pk, score in best:
        entry = entries.get(pk)
        if entry is None:
            continue
        reason = refusal(context, entry.context)
        if reason is None:
            match.entry, match.score = entry, round(score, 4)
            match.rejected_by = None
            return match
        match.rejections.append({"entry_id": entry.pk, "score": round(score, 4), "guard": reason})
        match.rejected_by = match.rejected_by or reason
    return match


def embedding_for(context: dict[str, Any]) -> tuple[str, str, bytes] | None:
    """(the text embedded, the model's version, its float32 bytes) for storing an entry."""
    text = embedded_text(context)
    embedded = embed([text])
    if embedded is None:
        return None
    return text, embedded[0], embedded[1][0].astype(np.float32).tobytes()
