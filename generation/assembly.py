"""Turns a job's succeeded task outputs into one course document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from generation.prompts import parse_key
from generation.schemas import TaskKind

WITHHELD = ("held", "rejected")  # ModerationStatus values kept out of the course (models.py)

if TYPE_CHECKING:
    from generation.models import CourseGenerationJob, GenerationTask


def assemble_course(
    *, job: CourseGenerationJob, tasks: Sequence[GenerationTask], withhold: bool = True
) -> dict[str, Any]:
    """The course document. Output moderation held (or staff rejected) stays out of it and is
    listed under "held" instead, until staff release it (docs/safety.md); `withhold=False`
    assembles everything generated (for scoring, never for publishing)."""
    withheld = [t for t in tasks if withhold and t.moderation in WITHHELD]
    outputs = {(t.kind, t.key): t.output or {} for t in tasks if t not in withheld}
    outline = job.outline or {}
    metadata = outputs.get((TaskKind.METADATA, "course"), {})
    modules = []
    for m, module in enumerate(outline.get("modules", []), start=1):
        lessons = [
            _lesson(outputs, f"m{m}.l{n}", lesson)
            for n, lesson in enumerate(module["lessons"], start=1)
        ]
        modules.append(
            {
                "position": m,
                "title": module["title"],
                "description": module["description"],
                "summary": outputs.get((TaskKind.MODULE_SUMMARY, f"m{m}"), {}),
                "lessons": lessons,
            }
        )
    return {
        "title": metadata.get("title") or outline.get("title", ""),
        "description": metadata.get("description") or outline.get("description", ""),
        "metadata": metadata,
        "request": job.request,
        "mind_map": outputs.get((TaskKind.MIND_MAP, "course"), {}),
        "modules": modules,
        "held": [
            {
                "kind": t.kind,
                "key": t.key,
                "status": t.moderation,
                "categories": t.moderation_categories,
            }
            for t in withheld
        ],
    }


def _lesson(
    outputs: dict[tuple[str, str], dict[str, Any]], key: str, lesson: dict[str, Any]
) -> dict[str, Any]:
    _, position = parse_key(key)
    return {
        "key": key,
        "position": position,
        "title": lesson["title"],
        "summary": lesson["summary"],
        "learning_objectives": lesson["learning_objectives"],
        "section": outputs.get((TaskKind.LESSON_SECTION, key), {}),
        "assessment": outputs.get((TaskKind.ASSESSMENT, key), {}),
        "brain_bytes": outputs.get((TaskKind.BRAIN_BYTES, key), {}),
    }
