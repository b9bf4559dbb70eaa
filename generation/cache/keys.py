"""The exact key: the request context normalised (Unicode NFKC, case, whitespace) and hashed
with everything that changes what a task produces (its kind, prompt version, output schema,
model). Teachers' instructions are part of the context, so different instructions never share
an entry."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from functools import cache
from typing import Any

from generation.prompts import PROMPT_VERSIONS
from generation.schemas import OUTPUT_SCHEMAS, TaskKind

# Outputs worth reusing: the outline of a request, and the lesson-level outputs keyed on their
# lesson context. Module summaries, mind maps and metadata depend on the whole course.
CACHED_KINDS = (
    TaskKind.OUTLINE,
    TaskKind.LESSON_SECTION,
    TaskKind.ASSESSMENT,
    TaskKind.BRAIN_BYTES,
)
# Context entries that identify a run rather than describe the request.
_RUN_FIELDS = ("job_id",)
_SPACE = re.compile(r"\s+")

# Coarse audience bands (the similarity layer filters on them exactly); first match wins.
_AUDIENCE_BANDS = (
    ("primary", ("primary", "elementary", "kindergarten", "children", "kids", "year 1", "grade 1")),
    ("secondary", ("secondary", "high school", "middle school", "teen", "gcse", "a-level")),
    ("university", ("university", "college", "undergraduate", "graduate", "phd")),
    ("professional", ("professional", "engineer", "developer", "nurse", "employee", "staff")),
)


def normalise_text(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def normalise(value: Any) -> Any:
    """Strings normalised, mappings with sorted keys, everything else as it is."""
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, dict):
        return {str(k): normalise(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


def audience_band(audience: str) -> str:
    text = normalise_text(audience)
    for band, words in _AUDIENCE_BANDS:
        if any(word in text for word in words):
            return band
    return "general"


@cache
def schema_hash(kind: TaskKind) -> str:
    """A short hash of the kind's output JSON schema: a changed schema invalidates entries."""
    schema = json.dumps(OUTPUT_SCHEMAS[kind].model_json_schema(), sort_keys=True)
    return hashlib.sha256(schema.encode()).hexdigest()[:16]


def current_prompt_version(kind: TaskKind, version: str) -> str:
    return version or PROMPT_VERSIONS[kind]


def cache_context(context: dict[str, Any]) -> dict[str, Any]:
    """The normalised context of a task (its request and its place in the outline)."""
    kept = {k: v for k, v in context.items() if k not in _RUN_FIELDS}
    normalised = normalise(kept)
    assert isinstance(normalised, dict)
    return normalised


def key_hash(*, kind: TaskKind, prompt_version: str, model: str, context: dict[str, Any]) -> str:
    material = json.dumps(
        {
            "kind": kind.value,
            "prompt_version": prompt_version,
            "schema": schema_hash(kind),
            "model": model,
            "context": context,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()
