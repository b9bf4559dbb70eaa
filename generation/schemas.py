"""Content schemas: what every LLM call must return, validated with pydantic.

Each task kind has one output model. The rules a teacher would expect that the JSON schema cannot
say (one correct option among distinct options, bounded mind-map depth) are validators, so their
messages reach the re-ask prompt as specific feedback.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Level(StrEnum):
    BEGINNER = "beginner"
    INTERMEDIATE = "intermediate"
    ADVANCED = "advanced"


# --- The request --------------------------------------------------------------------------------
# Bidirectional overrides and isolates reorder what a reader sees ("Trojan Source").
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def control_characters_refused(value: str, *, allowed: str = "") -> str:
    """`value` unchanged, or ValueError naming the first control character (newlines and tabs
    only where `allowed` lets them in: the multi-line instructions)."""
    for char in value:
        if char in allowed:
            continue
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS:
            where = "" if allowed else " (one line only)"
            raise ValueError(f"must not contain control characters{where}: U+{ord(char):04X}")
    return value


def _single_line(value: str) -> str:
    return control_characters_refused(value)


def _multi_line(value: str) -> str:
    return control_characters_refused(value, allowed="\n\r\t")


SingleLine = Annotated[str, AfterValidator(_single_line)]
MultiLine = Annotated[str, AfterValidator(_multi_line)]


class CourseRequest(Strict):
    """A validated course request as stored on the job (the class and owner live on the job)."""

    topic: SingleLine = Field(min_length=3, max_length=200)
    audience: SingleLine = Field(default="general learners", min_length=3, max_length=200)
    level: Level = Level.BEGINNER
    num_modules: int = Field(default=4, ge=1, le=12)
    lessons_per_module: int = Field(default=3, ge=1, le=10)
    questions_per_lesson: int = Field(default=4, ge=1, le=15)
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    instructions: MultiLine = Field(default="", max_length=2000)

    @property
    def task_count(self) -> int:
        """The tasks a course of this size runs (what admission weighs it by): its outline,
        three per lesson (section, assessment, brain bytes), one summary per module, the mind
        map and the metadata (services.plan_units)."""
        return 1 + self.num_modules * (3 * self.lessons_per_module + 1) + 2


# --- Outline ------------------------------------------------------------------------------------
class LessonOutline(Strict):
    title: Text
    summary: Text
    learning_objectives: list[Text] = Field(min_length=1, max_length=8)


class ModuleOutline(Strict):
    title: Text
    description: Text
    lessons: list[LessonOutline] = Field(min_length=1)


class CourseOutline(Strict):
    title: Text
    description: Text
    modules: list[ModuleOutline] = Field(min_length=1)


# --- Lesson section (the specification's LessonSectionContentSchema) ---------------------------
class KeyConcept(Strict):
    term: Text
    definition: str = Field(min_length=10)


class Example(Strict):
    title: Text
    description: str = Field(min_length=20)


class LessonSectionContent(Strict):
    introduction: str = Field(min_length=100)
    detailed_explanation: str = Field(min_length=500)
    key_concepts: list[KeyConcept] = Field(min_length=1)
    examples: list[Example] = Field(min_length=1)
    summary: str = Field(min_length=50)


# --- Assessment ---------------------------------------------------------------------------------
class QuestionType(StrEnum):
    MULTIPLE_CHOICE = "multiple_choice"
    TRUE_FALSE = "true_false"
    SHORT_ANSWER = "short_answer"


class Difficulty(StrEnum):
    EASY = "easy"
    MEDIUM = "medium"
    HARD = "hard"


class BloomLevel(StrEnum):
    REMEMBER = "remember"
    UNDERSTAND = "understand"
    APPLY = "apply"
    ANALYZE = "analyze"
    EVALUATE = "evaluate"
    CREATE = "create"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class Question(Strict):
    type: QuestionType
    stem: str = Field(min_length=10)
    options: list[Text] = Field(max_length=6)
    correct_answer: Text
    explanation: str = Field(min_length=20)
    difficulty: Difficulty
    bloom_level: BloomLevel
    objective: Text

    @model_validator(mode="after")
    def _answer_fits_type(self) -> Question:
        if self.type is QuestionType.MULTIPLE_CHOICE:
            self._check_multiple_choice()
        elif self.type is QuestionType.TRUE_FALSE:
            if sorted(_norm(o) for o in self.options) != ["false", "true"]:
                raise ValueError('true_false options must be exactly ["True", "False"]')
            if _norm(self.correct_answer) not in {"true", "false"}:
                raise ValueError('true_false correct_answer must be "True" or "False"')
        elif self.options:
            raise ValueError("short_answer questions must have no options")
        return self

    def _check_multiple_choice(self) -> None:
        normalised = [_norm(o) for o in self.options]
        if not 3 <= len(normalised) <= 6:
            raise ValueError("multiple_choice needs 3 to 6 options")
        if len(set(normalised)) != len(normalised):
            raise ValueError("multiple_choice options must be distinct")
        matches = normalised.count(_norm(self.correct_answer))
        if matches != 1:
            raise ValueError(
                "multiple_choice correct_answer must be exactly one of the options "
                f"(it matches {matches})"
            )


class Assessment(Strict):
    questions: list[Question] = Field(min_length=1, max_length=15)


# --- Brain bytes --------------------------------------------------------------------------------
class BrainBytes(Strict):
    """A short spoken-audio script for one lesson."""

    title: Text
    script: str = Field(min_length=200, max_length=3000)
    estimated_seconds: int = Field(ge=20, le=240)

    @model_validator(mode="after")
    def _duration_matches_script(self) -> BrainBytes:
        # Spoken English runs at roughly 130-170 words a minute; allow a generous band.
        words = len(self.script.split())
        low, high = words * 60 / 220, words * 60 / 100
        if not low <= self.estimated_seconds <= high:
            raise ValueError(
                f"estimated_seconds={self.estimated_seconds} does not fit a {words}-word script "
                f"(expected {round(low)}-{round(high)} s)"
            )
        return self


# --- Module summary -----------------------------------------------------------------------------
class ModuleSummary(Strict):
    summary: str = Field(min_length=50)
    key_takeaways: list[Text] = Field(min_length=2, max_length=8)


# --- Mind map -----------------------------------------------------------------------------------
MIND_MAP_MAX_DEPTH = 4


class MindMapNode(Strict):
    label: Text
    children: list[MindMapNode] = Field(default_factory=list, max_length=12)

    def depth(self) -> int:
        return 1 + max((child.depth() for child in self.children), default=0)


class MindMap(Strict):
    central_topic: Text
    nodes: list[MindMapNode] = Field(min_length=2, max_length=12)

    @model_validator(mode="after")
    def _bounded_depth(self) -> MindMap:
        deepest = max(node.depth() for node in self.nodes)
        if deepest > MIND_MAP_MAX_DEPTH:
            raise ValueError(f"mind map is {deepest} levels deep; at most {MIND_MAP_MAX_DEPTH}")
        return self


# --- Metadata -----------------------------------------------------------------------------------
class CourseMetadata(Strict):
    title: str = Field(min_length=5, max_length=120)
    description: str = Field(min_length=50, max_length=1500)
    categories: list[Text] = Field(min_length=1, max_length=5)
    tags: list[Text] = Field(min_length=1, max_length=15)
    level: Level
    estimated_hours: float = Field(gt=0, le=500)

    @field_validator("tags", "categories")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len({_norm(v) for v in values}) != len(values):
            raise ValueError("entries must be distinct")
        return values


# --- Task kinds ---------------------------------------------------------------------------------
class TaskKind(StrEnum):
    OUTLINE = "outline"
    LESSON_SECTION = "lesson_section"
    ASSESSMENT = "assessment"
    BRAIN_BYTES = "brain_bytes"
    MODULE_SUMMARY = "module_summary"
    MIND_MAP = "mind_map"
    METADATA = "metadata"


class Tier(StrEnum):
    COMPLEX = "complex"
    SIMPLE = "simple"


OUTPUT_SCHEMAS: dict[TaskKind, type[BaseModel]] = {
    TaskKind.OUTLINE: CourseOutline,
    TaskKind.LESSON_SECTION: LessonSectionContent,
    TaskKind.ASSESSMENT: Assessment,
    TaskKind.BRAIN_BYTES: BrainBytes,
    TaskKind.MODULE_SUMMARY: ModuleSummary,
    TaskKind.MIND_MAP: MindMap,
    TaskKind.METADATA: CourseMetadata,
}

# Complex work on the complex model, simple work on the simple one (the specification's routing).
TASK_TIERS: dict[TaskKind, Tier] = {
    TaskKind.OUTLINE: Tier.COMPLEX,
    TaskKind.LESSON_SECTION: Tier.COMPLEX,
    TaskKind.ASSESSMENT: Tier.COMPLEX,
    TaskKind.BRAIN_BYTES: Tier.COMPLEX,
    TaskKind.MODULE_SUMMARY: Tier.SIMPLE,
    TaskKind.MIND_MAP: Tier.SIMPLE,
    TaskKind.METADATA: Tier.SIMPLE,
}

LessonKey = tuple[int, int]
Scope = Literal["course", "module", "lesson"]


class ConstraintStep(StrEnum):
    """How strongly an OpenAI-compatible server is asked to keep to the output schema, strongest
    first (the ladder in generation/providers/openai.py; docs/providers.md)."""

    JSON_SCHEMA = "json_schema"  # Structured Outputs, strict (OpenAI, vLLM, Ollama)
    JSON_OBJECT_SCHEMA = "json_object_schema"  # json_object + schema: a grammar (llama.cpp)
    JSON_OBJECT = "json_object"  # plain json_object, the schema only in the prompt


CONSTRAINT_LADDER: tuple[ConstraintStep, ...] = tuple(ConstraintStep)
