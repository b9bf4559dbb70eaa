"""The course as every export reads it: typed, numbered and with stable identifiers.

`job.course` is the assembled JSON document (generation/assembly.py), re-assembled whenever a
task is regenerated, so reading it always gives the current version of every part. Each format
reads this one model instead of walking the JSON on its own, so a question is numbered, keyed and
marked the same way in the page, the PDF, the QTI package and the SCORM package.

Everything here is model text: data to be escaped or sanitised by whoever renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from generation.models import CourseGenerationJob

OPTION_LETTERS = "ABCDEFGHIJKL"
AUTO_MARKED = ("multiple_choice", "true_false")


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


@dataclass(frozen=True)
class Option:
    identifier: str  # "A", "B", ...: the QTI simpleChoice identifier and the SCORM response
    text: str


@dataclass(frozen=True)
class Question:
    identifier: str  # "m1-l2-q3": unique in the course, a valid XML NCName and CMIIdentifier
    number: int
    type: str
    stem: str
    options: tuple[Option, ...]
    correct_answer: str
    explanation: str
    difficulty: str
    bloom_level: str
    objective: str

    @property
    def correct_option(self) -> Option | None:
        """The option that is the answer; None for short answers (a model answer, not a key)."""
        wanted = _norm(self.correct_answer)
        return next((o for o in self.options if _norm(o.text) == wanted), None)

    @property
    def auto_marked(self) -> bool:
        return self.type in AUTO_MARKED and self.correct_option is not None


@dataclass(frozen=True)
class BrainByte:
    title: str
    script: str
    estimated_seconds: int


@dataclass(frozen=True)
class Lesson:
    key: str  # "m1.l2", the task key
    anchor: str  # "m1-l2", the HTML id
    number: str  # "1.2"
    title: str
    summary: str
    objectives: tuple[str, ...]
    introduction: str
    explanation: str
    key_concepts: tuple[tuple[str, str], ...]
    examples: tuple[tuple[str, str], ...]
    section_summary: str
    questions: tuple[Question, ...]
    brain_byte: BrainByte | None


@dataclass(frozen=True)
class Module:
    position: int
    anchor: str
    title: str
    description: str
    summary: str
    key_takeaways: tuple[str, ...]
    lessons: tuple[Lesson, ...]


@dataclass(frozen=True)
class MindMapNode:
    label: str
    children: tuple[MindMapNode, ...] = ()


@dataclass(frozen=True)
class Course:
    job_id: str
    title: str
    description: str
    topic: str
    audience: str
    level: str
    language: str
    categories: tuple[str, ...]
    tags: tuple[str, ...]
    estimated_hours: float | None
    mind_map: MindMapNode | None
    modules: tuple[Module, ...]
    organisation: str = ""
    base_class: str = ""
    generated_at: datetime | None = None
    # Parts moderation held for staff review (or staff rejected), left out: "lesson_section m1.l2"
    held: tuple[str, ...] = ()

    @property
    def lessons(self) -> list[Lesson]:
        return [lesson for module in self.modules for lesson in module.lessons]

    @property
    def questions(self) -> list[Question]:
        return [q for lesson in self.lessons for q in lesson.questions]


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _texts(values: Any) -> tuple[str, ...]:
    return tuple(t for t in (_text(v) for v in values or ()) if t)


def _question(raw: dict[str, Any], *, lesson_anchor: str, number: int) -> Question:
    options = tuple(
        Option(identifier=OPTION_LETTERS[i], text=text)
        for i, text in enumerate(_texts(raw.get("options"))[: len(OPTION_LETTERS)])
    )
    return Question(
        identifier=f"{lesson_anchor}-q{number}",
        number=number,
        type=_text(raw.get("type")) or "short_answer",
        stem=_text(raw.get("stem")),
        options=options,
        correct_answer=_text(raw.get("correct_answer")),
        explanation=_text(raw.get("explanation")),
        difficulty=_text(raw.get("difficulty")),
        bloom_level=_text(raw.get("bloom_level")),
        objective=_text(raw.get("objective")),
    )


def _brain_byte(raw: dict[str, Any]) -> BrainByte | None:
    if not _text(raw.get("script")):
        return None
    seconds = raw.get("estimated_seconds")
    return BrainByte(
        title=_text(raw.get("title")),
        script=_text(raw.get("script")),
        estimated_seconds=seconds if isinstance(seconds, int) else 0,
    )


def _lesson(raw: dict[str, Any], *, module: int, position: int) -> Lesson:
    anchor = f"m{module}-l{position}"
    section = raw.get("section") or {}
    questions = (raw.get("assessment") or {}).get("questions") or []
    return Lesson(
        key=_text(raw.get("key")) or f"m{module}.l{position}",
        anchor=anchor,
        number=f"{module}.{position}",
        title=_text(raw.get("title")),
        summary=_text(raw.get("summary")),
        objectives=_texts(raw.get("learning_objectives")),
        introduction=_text(section.get("introduction")),
        explanation=_text(section.get("detailed_explanation")),
        key_concepts=tuple(
            (_text(c.get("term")), _text(c.get("definition")))
            for c in section.get("key_concepts") or ()
        ),
        examples=tuple(
            (_text(e.get("title")), _text(e.get("description")))
            for e in section.get("examples") or ()
        ),
        section_summary=_text(section.get("summary")),
        questions=tuple(
            _question(q, lesson_anchor=anchor, number=n) for n, q in enumerate(questions, start=1)
        ),
        brain_byte=_brain_byte(raw.get("brain_bytes") or {}),
    )


def _module(raw: dict[str, Any], *, position: int) -> Module:
    summary = raw.get("summary") or {}
    return Module(
        position=position,
        anchor=f"m{position}",
        title=_text(raw.get("title")),
        description=_text(raw.get("description")),
        summary=_text(summary.get("summary")),
        key_takeaways=_texts(summary.get("key_takeaways")),
        lessons=tuple(
            _lesson(lesson, module=position, position=n)
            for n, lesson in enumerate(raw.get("lessons") or [], start=1)
        ),
    )


def _mind_map_node(raw: Any, depth: int = 1) -> MindMapNode | None:
    if not isinstance(raw, dict) or not _text(raw.get("label")):
        return None
    children = () if depth >= 6 else tuple(raw.get("children") or ())
    kept = (_mind_map_node(child, depth + 1) for child in children)
    return MindMapNode(label=_text(raw["label"]), children=tuple(c for c in kept if c))


def _mind_map(raw: dict[str, Any]) -> MindMapNode | None:
    root = _mind_map_node({"label": raw.get("central_topic"), "children": raw.get("nodes")})
    return root if root is not None and root.children else None


def course_from_document(document: dict[str, Any], *, job_id: str = "") -> Course:
    """The typed course of an assembled course document (`job.course`)."""
    metadata = document.get("metadata") or {}
    request = document.get("request") or {}
    hours = metadata.get("estimated_hours")
    return Course(
        job_id=job_id,
        title=_text(document.get("title")) or _text(request.get("topic")) or "Untitled course",
        description=_text(document.get("description")),
        topic=_text(request.get("topic")),
        audience=_text(request.get("audience")),
        level=_text(metadata.get("level")) or _text(request.get("level")),
        language=_text(request.get("language")) or "en",
        categories=_texts(metadata.get("categories")),
        tags=_texts(metadata.get("tags")),
        estimated_hours=float(hours) if isinstance(hours, int | float) else None,
        mind_map=_mind_map(document.get("mind_map") or {}),
        modules=tuple(
            _module(m, position=n) for n, m in enumerate(document.get("modules") or [], start=1)
        ),
        held=tuple(f"{h.get('kind')} {h.get('key')}" for h in document.get("held") or []),
    )


def course_of_job(job: CourseGenerationJob) -> Course:
    """The job's current course; the caller checks that it has one."""
    course = course_from_document(job.course or {}, job_id=str(job.pk))
    return replace(
        course,
        organisation=job.organisation.name if job.organisation_id else "",
        base_class=job.base_class.name if job.base_class_id else "",
        generated_at=job.finished_at,
    )
