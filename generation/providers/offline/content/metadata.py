"""Content of a metadata task: title, description, categories, tags, level and hours."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from generation.providers.offline.content.facts import Data, Facts
from generation.providers.offline.content.plan import plan_sketch
from generation.providers.offline.content.text import SMALL_WORDS, distinct, fit, title_case

_CATEGORY_LEVELS = {
    "beginner": "Introductory Courses",
    "intermediate": "Intermediate Courses",
    "advanced": "Advanced Courses",
}
_CATEGORIES = ("Professional Development", "Personal Development", "Skills and Training")
_STOP_WORDS = SMALL_WORDS | {"from", "into", "your", "what", "how", "why", "intro", "introduction"}


def build_metadata(facts: Facts, rng: random.Random) -> Data:
    modules = facts.sketch or plan_sketch(facts.plan)
    lessons = sum(len(lessons) or 1 for _, lessons in modules)
    hours = round(lessons * rng.uniform(0.6, 0.9) + len(modules) * 0.5, 1)
    title = facts.course_title if len(facts.course_title) >= 5 else f"{facts.course_title} course"
    return {
        "title": title[:120],
        "description": _metadata_description(facts, modules, lessons, hours),
        "categories": distinct(
            [title_case(facts.topic), rng.choice(_CATEGORIES), _CATEGORY_LEVELS[facts.level]], 5
        ),
        "tags": _tags(facts),
        "level": facts.level,
        "estimated_hours": min(hours, 500.0),
    }


def _metadata_description(
    facts: Facts, modules: Sequence[tuple[str, Any]], lessons: int, hours: float
) -> str:
    span = (
        f"It moves from {modules[0][0]} to {modules[-1][0]}"
        if len(modules) > 1
        else f"It centers on {modules[0][0]}"
    )
    text = (
        f"{facts.course_title} is a {len(modules)}-module, {lessons}-lesson course on "
        f"{facts.topic} for {facts.audience}. {span}, mixing clear explanations, worked examples, "
        f"short audio Brain Bytes and assessments. Designed for {facts.level} learners, it takes "
        f"about {math.ceil(hours)} hours at a comfortable pace."
    )
    return fit(text, 1500)


def _tags(facts: Facts) -> list[str]:
    topic = facts.topic.lower()
    keywords = [w.strip(",.:;!?()") for w in topic.split()]
    keywords = [w for w in keywords if len(w) > 3 and w not in _STOP_WORDS]
    tags = [topic, *keywords, f"{topic} {facts.level}", facts.level, "online course"]
    tags += ["self-paced", "worked examples", "assessments", "brain bytes"]
    return distinct(tags, 12)
