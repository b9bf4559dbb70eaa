"""Versioned prompt templates, one per task kind.

Every prompt of one course starts with the same system message (instructions and the course
context, including the outline once it exists), so providers with prompt caching serve that prefix
from cache for all but the first call; the task-specific part comes last, in the user message.
Bump a kind's version whenever its template changes: the version is stored on each task row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from generation.providers.base import Message
from generation.schemas import CourseOutline, CourseRequest, TaskKind

PROMPT_VERSIONS: dict[TaskKind, str] = {kind: "v1" for kind in TaskKind}

SYSTEM_TEMPLATE = """You are an expert instructional designer and subject-matter teacher.
You write accurate, engaging and age-appropriate course material for schools and organisations.

Rules for every reply:
- Reply with a single JSON object that matches the requested schema exactly; no prose around it.
- Write in the course language ({language}) for the stated audience and level.
- Be factually accurate; prefer concrete, everyday examples to abstractions.
- Never include personal data, unsafe instructions or copyrighted text.
- Keep terminology consistent with the course outline below.

Course context:
- Topic: {topic}
- Audience: {audience}
- Level: {level}
- Modules: {num_modules}, lessons per module: {lessons_per_module}
- Teacher's instructions: {instructions}

Course outline:
{outline}
"""

TASK_TEMPLATES: dict[TaskKind, str] = {
    TaskKind.OUTLINE: (
        "Design the course outline: exactly {num_modules} modules, each with exactly "
        "{lessons_per_module} lessons. Give every lesson a title, a one-sentence summary and "
        "2 to 4 measurable learning objectives (start each with a verb)."
    ),
    TaskKind.LESSON_SECTION: (
        "Write the lesson section for module {module_index} ({module_title}), lesson "
        "{lesson_index}: {lesson_title}. Cover every learning objective: {objectives}. "
        "introduction at least 100 characters, detailed_explanation at least 500, at least one "
        "key concept (term and definition), at least one worked example, summary at least 50."
    ),
    TaskKind.ASSESSMENT: (
        "Write exactly {questions_per_lesson} assessment questions for module {module_index}, "
        "lesson {lesson_index}: {lesson_title}. Mix multiple_choice (3-6 distinct options, exactly "
        'one correct, no "all/none of the above"), true_false (options ["True", "False"]) and '
        "short_answer (no options). Each question names the learning objective it checks, one "
        "of: {objectives}; give difficulty, Bloom level and an explanation of the answer."
    ),
    TaskKind.BRAIN_BYTES: (
        "Write a brain byte for module {module_index}, lesson {lesson_index}: {lesson_title}: "
        "a spoken-audio script of 60 to 120 seconds that a narrator reads aloud, with a title "
        "and estimated_seconds matching the script at about 150 words per minute."
    ),
    TaskKind.MODULE_SUMMARY: (
        "Summarise module {module_index}: {module_title} in one paragraph of at least 50 "
        "characters, with 2 to 8 key takeaways."
    ),
    TaskKind.MIND_MAP: (
        "Draw a mind map of the whole course: central_topic is the course topic, one node per "
        "module with its lessons as children; at most 3 levels deep."
    ),
    TaskKind.METADATA: (
        "Write the course metadata: a catchy title (5-120 characters), a description of 50-1500 "
        "characters, 1-5 categories, 1-15 distinct tags, the level and the estimated hours."
    ),
}

REASK_TEMPLATE = (
    "Your previous reply did not pass validation. Errors (field path: problem):\n{errors}\n"
    "Reply again with the complete corrected JSON object. Keep what was right; fix only these."
)


def _outline_text(outline: CourseOutline | None) -> str:
    if outline is None:
        return "(not written yet)"
    lines = [f"Title: {outline.title}"]
    for m, module in enumerate(outline.modules, start=1):
        lines.append(f"Module {m}: {module.title}")
        lines.extend(
            f"  Lesson {m}.{n}: {lesson.title}" for n, lesson in enumerate(module.lessons, 1)
        )
    return "\n".join(lines)


def system_message(request: CourseRequest, outline: CourseOutline | None) -> Message:
    text = SYSTEM_TEMPLATE.format(
        language=request.language,
        topic=request.topic,
        audience=request.audience,
        level=request.level.value,
        num_modules=request.num_modules,
        lessons_per_module=request.lessons_per_module,
        instructions=request.instructions or "(none)",
        outline=_outline_text(outline),
    )
    return Message("system", text)


def build_messages(
    kind: TaskKind,
    *,
    request: CourseRequest,
    outline: CourseOutline | None,
    context: Mapping[str, Any],
) -> tuple[Message, ...]:
    values = {**request.model_dump(mode="json"), **context}
    values["objectives"] = "; ".join(context.get("learning_objectives", [])) or "(see outline)"
    return (
        system_message(request, outline),
        Message("user", TASK_TEMPLATES[kind].format(**values)),
    )


def reask_messages(
    base: tuple[Message, ...], *, failed_output: str, errors: list[str]
) -> tuple[Message, ...]:
    """The base prompt plus only the latest failure: re-asks replace, never accumulate."""
    feedback = REASK_TEMPLATE.format(errors="\n".join(f"- {e}" for e in errors))
    return (*base, Message("assistant", failed_output), Message("user", feedback))


def task_context(
    kind: TaskKind, key: str, *, request: CourseRequest, outline: CourseOutline | None
) -> dict[str, Any]:
    """The structured facts of one task: its place in the outline and the titles around it."""
    context: dict[str, Any] = {**request.model_dump(mode="json"), "task_key": key}
    if outline is None:
        return context
    context["course_title"] = outline.title
    context["outline"] = [
        {"title": m.title, "lessons": [lesson.title for lesson in m.lessons]}
        for m in outline.modules
    ]
    module_index, lesson_index = parse_key(key)
    if module_index is not None:
        module = outline.modules[module_index - 1]
        context.update(module_index=module_index, module_title=module.title)
        if lesson_index is not None:
            lesson = module.lessons[lesson_index - 1]
            context.update(
                lesson_index=lesson_index,
                lesson_title=lesson.title,
                lesson_summary=lesson.summary,
                learning_objectives=list(lesson.learning_objectives),
            )
    return context


def parse_key(key: str) -> tuple[int | None, int | None]:
    """'course' -> (None, None); 'm2' -> (2, None); 'm2.l3' -> (2, 3)."""
    if not key.startswith("m"):
        return None, None
    module_part, _, lesson_part = key.partition(".")
    module_index = int(module_part[1:])
    return module_index, int(lesson_part[1:]) if lesson_part else None


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)
