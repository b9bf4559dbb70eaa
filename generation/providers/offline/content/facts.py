"""Facts: the request context a content builder reads, with the simulator's plan as fallback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from generation.providers.offline.content.plan import (
    Course,
    Lesson,
    Module,
    plan_course,
    plan_sketch,
)
from generation.providers.offline.content.text import lc_first, sentence, title_case

Data = dict[str, Any]


@dataclass(frozen=True)
class Facts:
    seed: int
    topic: str
    audience: str
    level: str
    questions: int
    module_index: int
    lesson_index: int
    plan: Course  # the simulator's own outline; fills in whatever the context leaves out
    course_title: str
    module: Module
    module_title: str
    lesson_title: str
    lesson_focus: str
    lesson_summary: str
    objectives: tuple[str, ...]
    sketch: tuple[tuple[str, tuple[str, ...]], ...]  # (module title, lesson titles) per module
    rules: frozenset[str] = frozenset()  # prompt rules the simulator follows (content/rules.py)

    def words(self, **extra: str) -> dict[str, str]:
        """The placeholders every template may use."""
        objectives = self.objectives
        second = (
            objectives[1] if len(objectives) > 1 else f"apply {self.lesson_focus} to a new case"
        )
        return {
            "t": self.topic,
            "T": title_case(self.topic),
            "audience": self.audience,
            "level": self.level,
            "course": self.course_title,
            "module": self.module_title,
            "lesson": self.lesson_title,
            "focus": self.lesson_focus,
            "summary": sentence(self.lesson_summary),
            "obj0": lc_first(objectives[0]),
            "obj1": lc_first(second),
            **extra,
        }


_LEVELS = ("beginner", "intermediate", "advanced")


def read_facts(context: Mapping[str, Any], seed: int) -> Facts:
    topic = _text(context, "topic", "General Studies")
    level = _text(context, "level", "beginner").lower()
    level = level if level in _LEVELS else "beginner"
    audience = _text(context, "audience", "general learners")
    size = (_int(context, "num_modules", 4), _int(context, "lessons_per_module", 3))
    plan = plan_course(topic, level, audience, size, seed)
    module_index, lesson_index = _int(context, "module_index", 1), _int(context, "lesson_index", 1)
    module = plan.modules[(module_index - 1) % len(plan.modules)]
    lesson = module.lessons[(lesson_index - 1) % len(module.lessons)]
    lesson_title = _text(context, "lesson_title", lesson.title)
    return Facts(
        seed=seed,
        topic=topic,
        audience=audience,
        level=level,
        questions=_int(context, "questions_per_lesson", 4),
        module_index=module_index,
        lesson_index=lesson_index,
        plan=plan,
        course_title=_text(context, "course_title", plan.title),
        module=module,
        module_title=_text(context, "module_title", module.title),
        lesson_title=lesson_title,
        lesson_focus=_focus(lesson_title, lesson),
        lesson_summary=_text(context, "lesson_summary", lesson.summary),
        objectives=_strings(context.get("learning_objectives")) or lesson.objectives,
        sketch=_sketch(context.get("outline")) or plan_sketch(plan),
        rules=frozenset(_strings(context.get("prompt_rules"))),
    )


def _focus(lesson_title: str, planned: Lesson) -> str:
    """A noun phrase for prose; titles from someone else's outline get a neutral wrapper."""
    return planned.focus if lesson_title == planned.title else f"the ideas in {lesson_title}"


def _text(context: Mapping[str, Any], key: str, default: str) -> str:
    value = context.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else default


def _int(context: Mapping[str, Any], key: str, default: int) -> int:
    try:
        value = int(context.get(key) or default)
    except (TypeError, ValueError):
        value = default
    return max(1, value)


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v.strip() for v in value if isinstance(v, str) and v.strip())


def _sketch(outline: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The context's outline as (module title, lesson titles); () when absent or unusable."""
    if not isinstance(outline, list | tuple):
        return ()
    modules = []
    for item in outline:
        if (
            isinstance(item, Mapping)
            and isinstance(item.get("title"), str)
            and item["title"].strip()
        ):
            lessons = item.get("lessons") or []
            titles = [x.get("title") if isinstance(x, Mapping) else x for x in lessons]
            modules.append((item["title"].strip(), _strings(titles)))
    return tuple(modules)
