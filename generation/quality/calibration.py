"""Calibrating the judge: does it rank a good lesson above the same lesson with one named flaw?

The calibration set (tests/calibration/judge_set.json, written for this project) holds lessons
in a good version, each with edits that make a flawed version and name the flaw: a wrong answer
key, a false statement, an objective not taught, off-level vocabulary, two correct options, a
duplicate question. Each version is judged through the same path as a course's lessons
(judge.judge_lesson); a pair agrees when the good version's overall is strictly higher (a tie
does not agree, and is counted apart). With the offline provider the judge is a simulator and
its agreement says nothing about a real model's; with a real model this is the measurement.
"""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from generation.providers import Provider
from generation.quality.judge import JudgedLesson, JudgeOutcome, judge_lesson
from generation.rubric import Criterion
from generation.schemas import CourseRequest, LessonSectionContent, Question

# Each flaw, and the criterion a judge should mark down for it.
FLAWS: dict[str, Criterion] = {
    "wrong_answer_key": Criterion.ACCURACY,
    "false_statement": Criterion.ACCURACY,
    "objective_not_taught": Criterion.OBJECTIVES_TAUGHT,
    "off_level_vocabulary": Criterion.AUDIENCE_FIT,
    "two_correct_options": Criterion.QUESTION_QUALITY,
    "duplicate_question": Criterion.QUESTION_QUALITY,
}


class CalibrationSetError(ValueError):
    """The calibration file is malformed; the message names the item and the problem."""


@dataclass(frozen=True)
class Flawed:
    flaw: str
    lesson: JudgedLesson


@dataclass(frozen=True)
class CalibrationItem:
    id: str
    good: JudgedLesson
    flawed: tuple[Flawed, ...]


# --- Loading --------------------------------------------------------------------------------------
def load_set(path: Path) -> list[CalibrationItem]:
    """Read and check the calibration set: every version a valid lesson, every edit applies."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationSetError(f"cannot read {path}: {exc}") from exc
    items = [_item(raw) for raw in data.get("items", [])]
    ids = Counter(item.id for item in items)
    if duplicated := [i for i, n in ids.items() if n > 1]:
        raise CalibrationSetError(f"item ids used twice: {', '.join(duplicated)}")
    return items


def _item(raw: Mapping[str, Any]) -> CalibrationItem:
    item_id = str(raw.get("id", "?"))
    try:
        request = CourseRequest(
            topic=raw["topic"], audience=raw["audience"], level=raw["level"], language="en"
        )
        lesson = {"section": raw["section"], "questions": raw["questions"]}
        good = _lesson(item_id, request, raw, lesson)
        flawed = tuple(
            Flawed(f["flaw"], _lesson(item_id, request, raw, apply_edits(lesson, f["edits"])))
            for f in raw["flaws"]
        )
    except (KeyError, TypeError, ValidationError, ValueError) as exc:
        raise CalibrationSetError(f"item {item_id}: {exc}") from exc
    for version in flawed:
        if version.flaw not in FLAWS:
            raise CalibrationSetError(f"item {item_id}: unknown flaw {version.flaw!r}")
    return CalibrationItem(item_id, good, flawed)


def _lesson(
    item_id: str, request: CourseRequest, raw: Mapping[str, Any], lesson: Mapping[str, Any]
) -> JudgedLesson:
    section = LessonSectionContent.model_validate(lesson["section"]).model_dump(mode="json")
    questions = [Question.model_validate(q).model_dump(mode="json") for q in lesson["questions"]]
    return JudgedLesson(
        key=item_id,
        request=request,
        title=str(raw["title"]),
        objectives=[str(o) for o in raw["objectives"]],
        section=section,
        questions=questions,
    )


def apply_edits(lesson: Mapping[str, Any], edits: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of `lesson` with each edit applied: {"path": "section.summary", "find": ...,
    "replace": ...} replaces text found exactly once; {"path": ..., "set": value} sets a value."""
    out = copy.deepcopy(dict(lesson))
    for edit in edits:
        *parents, last = str(edit["path"]).split(".")
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if "set" in edit:
            node[key] = copy.deepcopy(edit["set"])
            continue
        text = node[key]
        if text.count(edit["find"]) != 1:
            raise ValueError(f"{edit['path']}: the text to replace must occur exactly once")
        node[key] = text.replace(edit["find"], edit["replace"])
    if out == lesson:
        raise ValueError("the edits change nothing")
    return out


# --- Running ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairResult:
    item: str
    flaw: str
    good: float
    flawed: float
    good_on_criterion: int
    flawed_on_criterion: int

    @property
    def agrees(self) -> bool:
        return self.good > self.flawed

    @property
    def tie(self) -> bool:
        return self.good == self.flawed


@dataclass
class CalibrationReport:
    items: int
    simulated: bool
    pairs: list[PairResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: int = 0
    cost_usd: Decimal = Decimal(0)
    models: set[str] = field(default_factory=set)

    def agreement(self, flaw: str | None = None) -> float | None:
        pairs = [p for p in self.pairs if flaw is None or p.flaw == flaw]
        return round(sum(p.agrees for p in pairs) / len(pairs), 4) if pairs else None

    def on_criterion(self, flaw: str) -> float | None:
        """How often the flaw's own criterion scored the good version strictly higher."""
        pairs = [p for p in self.pairs if p.flaw == flaw]
        if not pairs:
            return None
        lower = sum(p.good_on_criterion > p.flawed_on_criterion for p in pairs)
        return round(lower / len(pairs), 4)

    def summary(self) -> dict[str, Any]:
        by_flaw: dict[str, list[PairResult]] = defaultdict(list)
        for pair in self.pairs:
            by_flaw[pair.flaw].append(pair)
        return {
            "items": self.items,
            "pairs": len(self.pairs),
            "pairs_by_flaw": {f: len(by_flaw[f]) for f in FLAWS if f in by_flaw},
            "agreement": self.agreement(),
            "agreement_by_flaw": {f: self.agreement(f) for f in FLAWS if f in by_flaw},
            "criterion_agreement_by_flaw": {f: self.on_criterion(f) for f in FLAWS if f in by_flaw},
            "ties": sum(p.tie for p in self.pairs),
            "ties_by_flaw": {f: sum(p.tie for p in by_flaw[f]) for f in FLAWS if f in by_flaw},
            "errors": len(self.errors),
            "simulated": self.simulated,
            "judge_calls": self.calls,
            "cost_usd": str(self.cost_usd),
            "models": sorted(self.models),
        }


def calibrate(
    items: Sequence[CalibrationItem],
    *,
    provider: Provider,
    model: str | None = None,
    flaws: Sequence[str] = (),
    limit: int | None = None,
    progress: Callable[[PairResult], None] | None = None,
) -> CalibrationReport:
    """Judge every good version and its flawed versions; `limit` caps the pairs judged."""
    report = CalibrationReport(items=0, simulated=provider.name == "offline")
    for item in items:
        wanted = [f for f in item.flawed if not flaws or f.flaw in flaws]
        if not wanted or (limit is not None and len(report.pairs) >= limit):
            continue
        report.items += 1
        good = _judged(report, item.good, provider, model)
        for version in wanted[: None if limit is None else limit - len(report.pairs)]:
            flawed = _judged(report, version.lesson, provider, model)
            if good is None or flawed is None:
                continue
            criterion = FLAWS[version.flaw]
            pair = PairResult(
                item=item.id,
                flaw=version.flaw,
                good=good.overall,
                flawed=flawed.overall,
                good_on_criterion=good.score_of(criterion).score,
                flawed_on_criterion=flawed.score_of(criterion).score,
            )
            report.pairs.append(pair)
            if progress:
                progress(pair)
    return report


def _judged(
    report: CalibrationReport, lesson: JudgedLesson, provider: Provider, model: str | None
) -> Any:
    outcome: JudgeOutcome = judge_lesson(lesson, provider=provider, model=model)
    report.calls += len(outcome.result.attempts)
    report.cost_usd += outcome.result.cost_usd
    report.models.update(a.model for a in outcome.result.attempts)
    if outcome.verdict is None:
        report.errors.append(f"{lesson.key}: {outcome.result.error}")
    return outcome.verdict
