"""Parts of an output object, for targeted regeneration.

A part is one top-level field (`introduction`) or one item of a top-level list of objects
(`questions.2`). When validation errors fall inside a few parts, the pipeline asks the provider for
those parts alone, each with its own schema (one `Question`, or a one-field object such as
`{"introduction": ...}`), and merges the answers back, instead of asking for the whole object again.
Errors at the root (model-wide rules) or in most of the object mean a whole re-ask.
"""

from __future__ import annotations

import copy
import functools
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, create_model

from generation.field_errors import FieldError
from generation.schemas import Strict


def _item_model(schema: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The item model of a `list[SomeModel]` field, else None."""
    annotation = schema.model_fields[field].annotation
    if typing.get_origin(annotation) is not list:
        return None
    (item,) = typing.get_args(annotation) or (None,)
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def part_of(schema: type[BaseModel], path: str) -> str | None:
    """The part an error path falls in, or None when only a whole re-ask can fix it."""
    field, _, rest = path.partition(".")
    if field not in schema.model_fields:
        return None  # the root, or a field the schema does not have
    if _item_model(schema, field) is None:
        return field
    index = rest.partition(".")[0]
    return f"{field}.{index}" if index.isdigit() else None  # a list's count is the whole list


def parts_of(schema: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """Every part of an object, in field order."""
    parts: list[str] = []
    for field in schema.model_fields:
        items = data.get(field)
        if _item_model(schema, field) is not None and isinstance(items, list):
            parts += [f"{field}.{i}" for i in range(len(items))]
        else:
            parts.append(field)
    return parts


def failing_parts(
    schema: type[BaseModel], data: Any, errors: Iterable[FieldError]
) -> list[str] | None:
    """The parts to regenerate, or None when a whole re-ask is the better repair: an error outside
    any part, a part missing from the data, or more than half of the object failing."""
    if not isinstance(data, dict):
        return None
    found = [part_of(schema, e.path) for e in errors]
    if not found or None in found:
        return None
    parts = list(dict.fromkeys(p for p in found if p))
    existing = parts_of(schema, data)
    if any(p not in existing for p in parts) or 2 * len(parts) > len(existing):
        return None
    return parts


@functools.cache
def part_schema(schema: type[BaseModel], part: str) -> type[BaseModel]:
    """The schema of one part: the list's item model, or an object with that one field."""
    field = part.partition(".")[0]
    item = _item_model(schema, field)
    if item is not None and "." in part:
        return item
    info = schema.model_fields[field]
    name = f"{schema.__name__}{''.join(w.title() for w in field.split('_'))}Part"
    made = create_model(name, __base__=Strict, **{field: (info.annotation, info)})  # type: ignore[call-overload]
    _ORIGINS[made] = (schema, field)
    return made


# A field part's model is made on demand, so it has no importable name: a request kept in a row
# (a batch line's repair) names it by its object's schema and the field (providers/batchfiles.py).
_ORIGINS: dict[type[BaseModel], tuple[type[BaseModel], str]] = {}


def part_origin(schema: type[BaseModel]) -> tuple[type[BaseModel], str] | None:
    """The object schema and field a field part's model was made from; None for others."""
    return _ORIGINS.get(schema)


def extract(data: dict[str, Any], part: str) -> Any:
    """The current value of a part, shaped like its schema."""
    field, _, index = part.partition(".")
    return data[field][int(index)] if index else {field: data.get(field)}


def merge(data: dict[str, Any], part: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with the part replaced by `value` (shaped like the part's schema)."""
    merged = copy.deepcopy(data)
    field, _, index = part.partition(".")
    if index:
        merged[field][int(index)] = value
    else:
        merged[field] = value[field]
    return merged


def within(part: str, errors: Iterable[FieldError]) -> tuple[FieldError, ...]:
    """The errors whose path lies inside the part."""
    return tuple(e for e in errors if e.path == part or e.path.startswith(part + "."))
