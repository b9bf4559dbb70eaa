"""Content for one request: the builder for its task kind, or one part of it (targeted
regeneration), drawn from a stream seeded by (topic, kind, position, seed, variant)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from generation.checks import is_near_duplicate
from generation.parts import extract
from generation.providers.offline.content.assessment import build_assessment
from generation.providers.offline.content.brain_bytes import build_brain_bytes
from generation.providers.offline.content.facts import Data, Facts, read_facts
from generation.providers.offline.content.lesson_section import build_lesson_section
from generation.providers.offline.content.metadata import build_metadata
from generation.providers.offline.content.mind_map import build_mind_map
from generation.providers.offline.content.module_summary import build_module_summary
from generation.providers.offline.content.outline import build_outline
from generation.providers.offline.seeding import content_rng
from generation.schemas import TaskKind


def build_content(kind: TaskKind, context: Mapping[str, Any], *, seed: int = 0) -> Data:
    """Schema-valid content for one task, deterministic for (topic, kind, position, seed)."""
    facts = read_facts(context, seed)
    module, lesson = _position(kind, facts)
    variant = context.get("variant")
    rng = content_rng(seed, facts.topic, kind, module, lesson, int(variant or 0))
    return _BUILDERS[kind](facts, rng)


def _position(kind: TaskKind, facts: Facts) -> tuple[int, int]:
    """Which indices make a task unique: course tasks have none, module tasks only a module."""
    if kind in {TaskKind.OUTLINE, TaskKind.MIND_MAP, TaskKind.METADATA}:
        return 0, 0
    if kind is TaskKind.MODULE_SUMMARY:
        return facts.module_index, 0
    return facts.module_index, facts.lesson_index


_BUILDERS: dict[TaskKind, Callable[[Facts, random.Random], Data]] = {
    TaskKind.OUTLINE: build_outline,
    TaskKind.LESSON_SECTION: build_lesson_section,
    TaskKind.ASSESSMENT: build_assessment,
    TaskKind.BRAIN_BYTES: build_brain_bytes,
    TaskKind.MODULE_SUMMARY: build_module_summary,
    TaskKind.MIND_MAP: build_mind_map,
    TaskKind.METADATA: build_metadata,
}


def part_content(
    kind: TaskKind, context: Mapping[str, Any], data: Data, part: str, seed: int
) -> Any:
    """One part of the content. Given stems to avoid (a replacement for a duplicate question), it
    draws again until its question differs from them, as a model told what not to repeat would."""
    value = extract(data, part)
    avoid = [str(s) for s in context.get("avoid") or []]
    topic = str(context.get("topic", ""))
    for variant in range(1, 50):
        stem = value.get("stem") if isinstance(value, dict) else None
        if not (avoid and stem and any(is_near_duplicate(stem, a, topic=topic) for a in avoid)):
            break
        value = extract(build_content(kind, {**context, "variant": variant}, seed=seed), part)
    return value
