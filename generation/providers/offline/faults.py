"""Fault injection: the rates of each injected fault, the file-driven outage, and the
schema-invalid variants of valid content that the "invalid" fault returns."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from generation.parts import extract, merge, parts_of
from generation.providers.offline.content import Data
from generation.schemas import OUTPUT_SCHEMAS, TaskKind

FAULT_KINDS = ("rate_limit", "server_error", "timeout", "malformed", "invalid", "unsafe")
TRANSIENT_FAULTS = {
    # fault: (message, HTTP status, wait before failing in units of time-to-first-token)
    "rate_limit": ("simulated rate limit (429 Too Many Requests)", 429, 0.0),
    "server_error": ("simulated server error (503 Service Unavailable)", 503, 1.0),
    "timeout": ("timeout: simulated request timeout", None, 2.0),
}


@dataclass(frozen=True)
class FaultRates:
    """Probability of each injected fault per call; at most one fault fires per call."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    timeout: float = 0.0
    malformed: float = 0.0
    invalid: float = 0.0
    unsafe: float = 0.0  # valid content with a sentence moderation flags (offline/moderation.py)

    @classmethod
    def parse(cls, spec: str) -> FaultRates:
        """Parse "rate_limit=0.05,invalid=0.1"; raise ValueError naming the bad part."""
        rates: dict[str, float] = {}
        for part in (p.strip() for p in (spec or "").split(",")):
            if part:
                name, rate = _parse_fault_part(part, rates)
                rates[name] = rate
        total = sum(rates.values())
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"fault rates in {spec!r} sum to {total:g}; they must sum to at most 1"
            )
        return cls(**rates)

    def pick(self, roll: float) -> str | None:
        """The fault a uniform roll in [0, 1) lands on, or None for a clean call."""
        threshold = 0.0
        for item in fields(self):
            threshold += getattr(self, item.name)
            if roll < threshold:
                return item.name
        return None


def _parse_fault_part(part: str, seen: Mapping[str, float]) -> tuple[str, float]:
    name, sep, value = (s.strip() for s in part.partition("="))
    if not sep:
        raise ValueError(f"bad fault spec part {part!r}: expected name=probability")
    if name not in FAULT_KINDS:
        raise ValueError(
            f"unknown fault {name!r} in fault spec part {part!r}; "
            f"expected one of {', '.join(FAULT_KINDS)}"
        )
    if name in seen:
        raise ValueError(f"fault {name!r} appears twice in the fault spec")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"bad fault spec part {part!r}: {value!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:  # also rejects nan, which fails every comparison
        raise ValueError(f"bad fault spec part {part!r}: probability must be between 0 and 1")
    return name, rate


class OutageFile:
    """A file holding a unix timestamp: while it is in the future, every call fails with 503."""

    def __init__(self, path: str) -> None:
        self.path = path
        # (mtime_ns, size) -> parsed timestamp, kept as one tuple so threads swap it atomically.
        self._cached: tuple[tuple[int, int], float | None] | None = None

    def until(self) -> float | None:
        if not self.path:
            return None
        try:
            stat = os.stat(self.path)  # the only syscall on the hot path when nothing changed
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cached
        if cached is None or cached[0] != stamp:
            cached = (stamp, _read_timestamp(self.path))
            self._cached = cached
        return cached[1]


def _read_timestamp(path: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return float(handle.read().strip())
    except (OSError, ValueError):
        return None  # half-written or garbage: no outage rather than a crash


def make_invalid(kind: TaskKind, data: Data, *, part: str = "", pick: float = 0.0) -> Data:
    """A copy of valid content with one realistic mistake in ONE part (one question, one field),
    which the kind's schema rejects; `pick` in [0, 1) chooses the part and the mistake, so the
    mistakes vary like a model's do. For a part request (`part` set) the data is that part."""
    broken = json.loads(json.dumps(data))  # deep copy; the input stays valid
    if part:
        return _break_part(part, broken, pick)
    choices = parts_of(OUTPUT_SCHEMAS[kind], broken)
    chosen = choices[min(int(pick * len(choices)), len(choices) - 1)]
    rest = pick * len(choices) % 1.0  # the remainder of the roll picks the mistake
    return merge(broken, chosen, _break_part(chosen, extract(broken, chosen), rest))


def _break_part(part: str, value: Any, pick: float) -> Any:
    if "." not in part:  # a field part: {"field": value}
        ((field, inner),) = value.items()
        return {field: _break_scalar(inner, pick)}
    if "options" in value:
        return _break_question(value, pick)
    texts = [k for k, v in value.items() if isinstance(v, str)]  # an item: concept, module ...
    key = texts[min(int(pick * len(texts)), len(texts) - 1)]
    return {**value, key: _break_scalar(value[key], pick * len(texts) % 1.0)}


def _break_scalar(value: Any, pick: float) -> Any:
    mistakes: tuple[Any, ...]
    if isinstance(value, list):
        mistakes = ([], "see below", [""])  # too few items, not a list, an empty item
    elif isinstance(value, bool | str) or value is None:
        mistakes = ("", None)  # empty, missing
    else:
        mistakes = (-1, 10**6, "soon")  # too small, too large, not a number
    return mistakes[min(int(pick * len(mistakes)), len(mistakes) - 1)]


def _break_question(question: Data, pick: float) -> Data:
    mistake = int(pick * 4)
    if mistake == 0 and question["type"] == "multiple_choice":
        question["correct_answer"] = "An answer that is not among the options"
    elif mistake == 0:
        question["options"] = ["Yes", "No", "Maybe"]
    elif mistake == 1:
        question["stem"] = "Why?"
    elif mistake == 2:
        question["explanation"] = "See notes."
    else:
        question["difficulty"] = "trivial"
    return question


def make_unsafe(data: Data, sentence: str) -> Data:
    """A copy of valid content with `sentence` appended to its longest text, as a model's unsafe
    output would read: still schema-valid, but flagged by moderation."""
    unsafe = json.loads(json.dumps(data))
    longest: tuple[int, Any, Any] | None = None
    stack: list[Any] = [unsafe]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, str) and (longest is None or len(value) > longest[0]):
                longest = (len(value), node, key)
            elif isinstance(value, dict | list):
                stack.append(value)
    if longest is not None:
        _, node, key = longest
        node[key] = f"{node[key]} {sentence}"
    return unsafe
