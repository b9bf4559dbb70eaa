"""Content of a module-summary task: a summary of the module's lessons and key takeaways."""

from __future__ import annotations

import random

from generation.providers.offline.content.facts import Data, Facts
from generation.providers.offline.content.text import join_words

_MODULE_SUMMARIES = (
    "{module} took you through {count}: {lessons}. Together they build a working grasp of "
    "{mfocus}, which supports everything else you do in {t}. The common thread is a habit of "
    "working in small, checked steps: state the goal, try the simplest approach, compare the "
    "result with what you expected, and adjust one thing at a time. If any lesson felt shaky, "
    "revisit it before moving on, because the rest of the course builds on these ideas directly.",
    "This module, {module}, covered {count}: {lessons}. Each one looked at a different side of "
    "{mfocus}, from the basic idea to the mistakes that most often trip learners up. Together "
    "they give {audience} a working foundation in this part of {t}: enough to tackle realistic "
    "tasks, explain your reasoning, and recognize when a result does not add up.",
)
_TAKEAWAYS = (
    "{lesson}: later work in {t} depends on it, so make sure it is solid.",
    "{lesson}: approach it in small, checked steps rather than big leaps.",
    "{lesson}: most mistakes come from skipping the comparison with a simple baseline.",
    "{lesson}: explaining it in your own words is the real test of understanding.",
    "{lesson}: work one concrete example all the way through before generalizing.",
)


def build_module_summary(facts: Facts, rng: random.Random) -> Data:
    lessons = _module_lessons(facts)
    mfocus = facts.module.focus if facts.module_title == facts.module.title else "these ideas"
    count = f"{len(lessons)} lesson{'s' if len(lessons) != 1 else ''}"
    words = facts.words(count=count, lessons=join_words(lessons), mfocus=mfocus)
    templates = rng.sample(_TAKEAWAYS, len(_TAKEAWAYS))
    pairs = zip(templates, lessons[:4], strict=False)  # at most four, one per lesson
    takeaways = [t.format(**{**words, "lesson": lesson}) for t, lesson in pairs]
    if len(takeaways) < 2:
        takeaways.append(
            f"Revisit {facts.module_title} whenever later work in {facts.topic} feels uncertain."
        )
    return {
        "summary": rng.choice(_MODULE_SUMMARIES).format(**words),
        "key_takeaways": takeaways,
    }


def _module_lessons(facts: Facts) -> list[str]:
    for title, lessons in facts.sketch:
        if title == facts.module_title and lessons:
            return list(lessons)
    return [lesson.title for lesson in facts.module.lessons]
