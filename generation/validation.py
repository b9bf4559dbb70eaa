"""Validation of provider output: the schema, then the content checks (generation/checks.py).

Errors come back as (path, message) pairs (`FieldError`, generation/field_errors.py) so a re-ask
can name exactly what to fix, and so a failure confined to one part can be regenerated alone
(generation/parts.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from generation.checks import run_checks
from generation.field_errors import FieldError
from generation.schemas import OUTPUT_SCHEMAS, CourseRequest, TaskKind


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


def validate_output(
    kind: TaskKind, data: Any, *, request: CourseRequest, context: Mapping[str, Any] | None = None
) -> ValidationOutcome:
    schema = OUTPUT_SCHEMAS[kind]
    try:
        model = schema.model_validate(data)
    except ValidationError as exc:
        return ValidationOutcome(None, _pydantic_errors(exc))
    errors = run_checks(kind, model, request, context or {})
    return ValidationOutcome(model if not errors else None, tuple(errors))
