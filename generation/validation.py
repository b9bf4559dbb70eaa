"""Validation of provider output: the schema, then the rules that need the request.

Errors come back as (path, message) pairs so a re-ask can name exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from generation.schemas import OUTPUT_SCHEMAS, Assessment, CourseOutline, CourseRequest, TaskKind


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path or '(root)'}: {self.message}"


@dataclass(frozen=True)
class ValidationOutcome:
    model: BaseModel | None
    errors: tuple[FieldError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def _pydantic_errors(exc: ValidationError) -> tuple[FieldError, ...]:
    return tuple(
        FieldError(".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()
    )


def _outline_counts(outline: CourseOutline, request: CourseRequest) -> list[FieldError]:
    errors = []
    if len(outline.modules) != request.num_modules:
        errors.append(
            FieldError(
                "modules", f"has {len(outline.modules)} modules; {request.num_modules} requested"
            )
        )
    for index, module in enumerate(outline.modules):
        if len(module.lessons) != request.lessons_per_module:
            errors.append(
                FieldError(
                    f"modules.{index}.lessons",
                    f"has {len(module.lessons)} lessons; {request.lessons_per_module} requested",
                )
            )
    return errors


def _assessment_rules(
    assessment: Assessment, request: CourseRequest, context: Mapping[str, Any]
) -> list[FieldError]:
    errors = []
    if len(assessment.questions) != request.questions_per_lesson:
        errors.append(
            FieldError(
                "questions",
                f"has {len(assessment.questions)} questions; "
                f"{request.questions_per_lesson} requested",
            )
        )
    stems = [" ".join(q.stem.lower().split()) for q in assessment.questions]
    for index, stem in enumerate(stems):
        if stem in stems[:index]:
            errors.append(FieldError(f"questions.{index}.stem", "repeats an earlier question"))
    return errors


def validate_output(
    kind: TaskKind, data: Any, *, request: CourseRequest, context: Mapping[str, Any] | None = None
) -> ValidationOutcome:
    schema = OUTPUT_SCHEMAS[kind]
    try:
        model = schema.model_validate(data)
    except ValidationError as exc:
        return ValidationOutcome(None, _pydantic_errors(exc))
    errors: list[FieldError] = []
    if isinstance(model, CourseOutline):
        errors = _outline_counts(model, request)
    elif isinstance(model, Assessment):
        errors = _assessment_rules(model, request, context or {})
    return ValidationOutcome(model if not errors else None, tuple(errors))
