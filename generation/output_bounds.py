"""The JSON schema a server compiles into a grammar, with the bounds that make a reply finish.

A pydantic output model says "at least 500 characters" and "at least one module", with no upper
bound. A grammar built from that lets a small model write forever: the first real run of SmolLM2
behind llama.cpp repeated modules and lessons until the call timed out (2,935 tokens, 20 minutes).
So the schema sent with `json_object` + schema (generation/providers/openai.py) is tightened:

* lists whose size the course request fixes get exactly that size (`modules`, `lessons`,
  `questions`), learning objectives 2 to 4 (what the prompt asks for), other lists at most
  `MAX_ITEMS`;
* a question's shape depends on its type (generation/schemas.py, Question): the grammar gets one
  variant per type allowed (COURSEGEN_QUESTION_TYPES), so a multiple-choice question has 3 to 4
  options, a true/false question the options "True" and "False" and such an answer, and a
  short-answer question no options. A grammar cannot tie a multiple-choice answer to one of the
  options: a small model gets it wrong, so `make demo-local` and the `llm` tests allow only
  true_false and short_answer;
* a string of one character or more must not start with a space (pydantic strips it: " " is
  empty), and has no control characters (a raw newline is not JSON);
* a brain byte's script is 700-900 characters (about 110-200 words) and its estimated_seconds
  55-60, which fits every script in that band (BrainBytes checks seconds against the word
  count, which a grammar cannot count);
* every string gets an upper bound: `max(4 x its minLength, MIN_STRING_CAP)` characters, at
  most `MAX_STRING_CAP`, so "at least 500" leaves room for a full explanation and still ends.
  llama.cpp expands a length bound into one grammar rule per character and refuses a grammar
  past about 1,000 of them ("number of rules ... exceeds sane defaults"); llama-cpp-python's
  server then dies on the request (the connection drops), which is why a bound of 3,000
  (BrainBytes.script) must not reach it as it is.

Nothing here loosens validation: pydantic still checks the output model as it is, and the bounds
are ones the content checks (generation/checks.py) would ask for anyway.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from pydantic import BaseModel

from generation.schemas import CourseRequest

MAX_ITEMS = 4
MIN_STRING_CAP = 200
MAX_STRING_CAP = 1000
STRING_CAP_FACTOR = 4
# Fixed bounds by property name (BrainBytes: see above).
_FIELDS: dict[str, dict[str, Any]] = {
    "script": {"type": "string", "minLength": 700, "maxLength": 900},
    "estimated_seconds": {"enum": list(range(55, 61))},
}
_NO_CONTROL = r'"\\\x00-\x1f'  # inside a character class: no quote, backslash or control
OBJECTIVES = (2, 4)  # the outline prompt asks for 2 to 4 learning objectives per lesson


def _drop_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_titles(v) for k, v in node.items() if k != "title" or _is_schema_map(v)}
    if isinstance(node, list):
        return [_drop_titles(v) for v in node]
    return node


def _is_schema_map(value: Any) -> bool:
    # A property *named* "title" (its value a sub-schema) is kept; a "title" keyword (a string)
    # is dropped.
    return isinstance(value, dict)


@functools.cache
def _base_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _drop_titles(model.model_json_schema())


def _counts(request: CourseRequest | None) -> dict[str, tuple[int, int]]:
    counts = {"learning_objectives": OBJECTIVES}
    if request is not None:
        counts |= {
            "modules": (request.num_modules, request.num_modules),
            "lessons": (request.lessons_per_module, request.lessons_per_module),
            "questions": (request.questions_per_lesson, request.questions_per_lesson),
        }
    return counts


def _bound(node: Any, counts: Mapping[str, tuple[int, int]], name: str = "") -> Any:
    if isinstance(node, list):
        return [_bound(v, counts) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {
                prop: copy.deepcopy(_FIELDS[prop]) if prop in _FIELDS else _bound(sub, counts, prop)
                for prop, sub in value.items()
            }
        else:
            out[key] = _bound(value, counts)
    if out.get("type") == "string" and "enum" not in out and "const" not in out:
        low = int(out.get("minLength", 0))
        cap = min(max(STRING_CAP_FACTOR * low, MIN_STRING_CAP), MAX_STRING_CAP)
        out["maxLength"] = min(int(out.get("maxLength", cap)), cap)
        if low == 1:  # a short text: no leading space (see above); the pattern carries the bound
            rest = out["maxLength"] - 1
            out["pattern"] = f"^[^ {_NO_CONTROL}][^{_NO_CONTROL}]{{0,{rest}}}$"
    if out.get("type") == "array":
        low, high = int(out.get("minItems", 0)), out.get("maxItems")
        fixed = counts.get(name)
        if fixed is not None:
            low, high = max(low, fixed[0]), min(int(high or fixed[1]), fixed[1])
        else:
            high = min(int(high or MAX_ITEMS), MAX_ITEMS)
        out["minItems"], out["maxItems"] = low, max(low, high)
    return out


_QUESTION_FIELDS = frozenset(
    {"type", "stem", "options", "correct_answer", "explanation", "difficulty", "bloom_level",
     "objective"}
)  # fmt: skip
_TRUE_FALSE = ["True", "False"]


def _question_variants(node: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """A bounded Question object schema as one variant per question type (anyOf)."""
    node = dict(node)
    defs = node.pop("$defs", None)  # a Question at the root (a part request): keep them there
    props = node["properties"]
    options, answer = props["options"], props["correct_answer"]
    shapes = {
        "multiple_choice": {"options": {**options, "minItems": 3, "maxItems": MAX_ITEMS}},
        "true_false": {
            "options": {"const": _TRUE_FALSE},
            "correct_answer": {"enum": _TRUE_FALSE},
        },
        "short_answer": {"options": {"type": "array", "items": options["items"], "maxItems": 0}},
    }  # fmt: skip
    variants = []
    for kind, shape in shapes.items():
        if kind not in allowed:
            continue
        variant_props = {**props, "type": {"const": kind}, "correct_answer": answer, **shape}
        variants.append({**node, "properties": variant_props})
    return {"anyOf": variants, **({"$defs": defs} if defs is not None else {})}


def _with_question_variants(node: Any, allowed: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_with_question_variants(v, allowed) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_question_variants(v, allowed) for k, v in node.items()}
    if out.get("type") == "object" and set(out.get("properties", {})) == _QUESTION_FIELDS:
        return _question_variants(out, allowed)
    return out


def bounded_schema(
    model: type[BaseModel], *, request: CourseRequest | None = None
) -> dict[str, Any]:
    """`model`'s JSON schema (without titles) with the bounds above; counts from `request`.

    The same object for the same model, counts and question types: read it, do not change it."""
    counts = tuple(sorted(_counts(request).items()))
    return _bounded_schema(model, counts, tuple(settings.COURSEGEN_QUESTION_TYPES))


# Every provider call asks for its schema, and building one (a deep copy and two walks) took
# 0.03-0.15 ms, ~5 ms of a 4x3 course; there are only a few models times a few counts.
@functools.lru_cache(maxsize=256)
def _bounded_schema(
    model: type[BaseModel],
    counts: tuple[tuple[str, tuple[int, int]], ...],
    question_types: tuple[str, ...],
) -> dict[str, Any]:
    bounded = _bound(copy.deepcopy(_base_schema(model)), dict(counts))
    return _with_question_variants(bounded, question_types)
