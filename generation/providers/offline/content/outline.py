"""Content of an outline task: the simulator's own plan, with the context's course title."""

from __future__ import annotations

import random

from generation.providers.offline.content.facts import Data, Facts


def build_outline(facts: Facts, rng: random.Random) -> Data:
    del rng  # the plan has its own stream, shared with every fallback that reads it
    plan = facts.plan
    return {
        "title": facts.course_title,
        "description": plan.description,
        "modules": [
            {
                "title": m.title,
                "description": m.description,
                "lessons": [
                    {
                        "title": lesson.title,
                        "summary": lesson.summary,
                        "learning_objectives": list(lesson.objectives),
                    }
                    for lesson in m.lessons
                ],
            }
            for m in plan.modules
        ],
    }
