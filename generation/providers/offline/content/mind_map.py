"""Content of a mind-map task: modules and lessons as branches, plus a key-ideas branch."""

from __future__ import annotations

import random

from generation.providers.offline.content.facts import Data, Facts
from generation.providers.offline.content.lesson_section import CONCEPTS
from generation.providers.offline.content.text import title_case

_LESSON_FACETS = ("Key terms", "Worked example", "Common mistakes", "Practice", "Review")


def build_mind_map(facts: Facts, rng: random.Random) -> Data:
    modules = facts.sketch[:12]
    small = sum(len(lessons) for _, lessons in modules) <= 4
    nodes = [
        {"label": title, "children": [_lesson_node(rng, title, small) for title in lessons[:12]]}
        for title, lessons in modules
    ]
    if len(nodes) < 12:
        # A cross-cutting branch; it also keeps a one-module course above the two-node minimum.
        ideas = [{"label": term, "children": []} for term, _ in rng.sample(CONCEPTS, 3)]
        nodes.append({"label": f"Key Ideas in {title_case(facts.topic)}", "children": ideas})
    return {"central_topic": facts.topic, "nodes": nodes}


def _lesson_node(rng: random.Random, title: str, detailed: bool) -> Data:
    facets = rng.sample(_LESSON_FACETS, 2) if detailed else []
    return {"label": title, "children": [{"label": f, "children": []} for f in facets]}
