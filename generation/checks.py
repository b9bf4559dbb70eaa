"""Content checks beyond the schema: the rules a teacher would apply to a reply that parses.

Each check takes the validated model, the course request and the task's context, and returns
`FieldError`s whose path points at the part to fix (`questions.2.options.3`,
`detailed_explanation`), so a failure feeds the same re-ask path as a schema error and can be
repaired in place.

Near-duplicate questions are checked within one assessment here. Across a course the assessment
tasks run in parallel and cannot see each other, so `course_duplicates` runs once they have all
finished (job finalize), and the later question of each pair is regenerated on its own.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import textstat
from django.conf import settings
from pydantic import BaseModel
from rapidfuzz import fuzz, process, utils

from generation.field_errors import FieldError
from generation.schemas import (
    Assessment,
    CourseOutline,
    CourseRequest,
    LessonSectionContent,
    MindMap,
    Question,
    QuestionType,
    TaskKind,
)

Context = Mapping[str, Any]
Check = Callable[[Any, CourseRequest, Context], list[FieldError]]

# Options that let a learner answer without knowing the content.
_CATCH_ALL = re.compile(
    r"\b(all|none|both|neither) of (the )?(above|these|those|them|the options|the answers)\b"
    r"|\bboth [a-f] and [a-f]\b",
    re.IGNORECASE,
)
# A distractor is comparable when within half to twice the correct option's length, or within a
# few characters of it (short options such as numbers differ a lot in ratio, not to a reader).
_LENGTH_RATIO = 2.0
_LENGTH_SLACK = 12
# A word: a letter of any script, then letters, apostrophes or hyphens (the same as [a-z][a-z'-]*
# for English; other scripts keep their words instead of losing them all). Written as runs of
# letters or of marks, taken possessively: the same words as [^\W\d_](?:[^\W\d_]|['-])* at about
# 1.4x the speed (a course's lessons are ~8,000 words, read at each task's check and at finalize).
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]+|['-]+)*+")
_STOP_WORDS = frozenset(
    """a about after all also an and any are as at be been before being between both but by can
    could did do does doing each for from had has have how i if in into is it its itself more
    most no not of on once only or other our out over own same should so some such than that the
    their them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours""".split()  # noqa: SIM905
)


# --- Assessment ---------------------------------------------------------------------------------
def _catch_all_options(index: int, question: Question) -> list[FieldError]:
    return [
        FieldError(
            f"questions.{index}.options.{j}",
            f'"{option}" is a catch-all option; replace it with a plausible, specific distractor '
            '(no "all/none of the above")',
            check="catch_all_option",
        )
        for j, option in enumerate(question.options)
        if _CATCH_ALL.search(option)
    ]


def _distractor_lengths(index: int, question: Question) -> list[FieldError]:
    if question.type is not QuestionType.MULTIPLE_CHOICE:
        return []
    correct = len(question.correct_answer)
    low, high = math.ceil(correct / _LENGTH_RATIO), math.floor(correct * _LENGTH_RATIO)
    errors = []
    for j, option in enumerate(question.options):
        size = len(option)
        if abs(size - correct) > _LENGTH_SLACK and not low <= size <= high:
            errors.append(
                FieldError(
                    f"questions.{index}.options.{j}",
                    f"this distractor has {size} characters and the correct answer {correct}; "
                    f"write distractors of comparable length ({low}-{high} characters) so the "
                    "answer does not stand out",
                    check="distractor_length",
                )
            )
    return errors


@functools.lru_cache(maxsize=4096)  # pairwise comparisons see each stem many times
def _stem_key(stem: str, topic: str) -> str:
    """The stem without the course topic's words: every question of a course names the topic,
    which says nothing about whether two questions ask the same thing."""
    words = set(_words(topic))
    key = " ".join(w for w in _words(stem) if w not in words)
    # A stem of the topic's words alone (or of no words) is compared whole: two empty keys would
    # score as identical.
    return key or stem.lower()


def similarity(a: str, b: str, *, topic: str = "") -> float:
    return float(
        fuzz.token_sort_ratio(
            _stem_key(a, topic), _stem_key(b, topic), processor=utils.default_process
        )
    )


def is_near_duplicate(a: str, b: str, *, topic: str = "") -> bool:
    return similarity(a, b, topic=topic) >= settings.COURSEGEN_DUPLICATE_SIMILARITY


def _duplicate_stems(questions: Sequence[Question], topic: str) -> list[FieldError]:
    errors = []
    for index, question in enumerate(questions):
        for earlier in range(index):
            if is_near_duplicate(question.stem, questions[earlier].stem, topic=topic):
                errors.append(
                    FieldError(
                        f"questions.{index}.stem",
                        f"near-duplicate of question {earlier} "
                        f'("{questions[earlier].stem}"); ask about a different idea or objective',
                        check="duplicate_question",
                    )
                )
                break
    return errors


def check_assessment(
    model: Assessment, request: CourseRequest, context: Context
) -> list[FieldError]:
    errors: list[FieldError] = []
    if len(model.questions) != request.questions_per_lesson:
        errors.append(
            FieldError(
                "questions",
                f"has {len(model.questions)} questions; {request.questions_per_lesson} requested",
                check="question_count",
            )
        )
    allowed = settings.COURSEGEN_QUESTION_TYPES
    for index, question in enumerate(model.questions):
        if question.type.value not in allowed:
            errors.append(
                FieldError(
                    f"questions.{index}.type",
                    f"{question.type.value} is not used in this course; use {', '.join(allowed)}",
                    check="question_type",
                )
            )
        errors += question_flaws(index, question)
    return errors + _duplicate_stems(model.questions, request.topic)


def question_flaws(index: int, question: Question) -> list[FieldError]:
    """What gives a question's answer away: catch-all options, a stand-out answer length."""
    return _catch_all_options(index, question) + _distractor_lengths(index, question)


# --- Lesson section -----------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    """A crude suffix stripper: enough for "mistakes" to match "mistake", "explained" "explain"."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def objective_keywords(objective: str) -> list[str]:
    """The content words of an objective, without its leading verb ("Explain", "Compare")."""
    words = _words(objective)[1:]
    return list(dict.fromkeys(w for w in words if w not in _STOP_WORDS and len(w) > 2))


def text_stems(text: str) -> set[str]:
    return {_stem(w) for w in set(_words(text))}  # each distinct word stemmed once


def objective_missing(objective: str, stems: set[str]) -> tuple[list[str], list[str]]:
    """The objective's key words, and those of them missing from `stems` (see text_stems)."""
    keywords = objective_keywords(objective)
    return keywords, [w for w in keywords if _stem(w) not in stems]


def _missing_objectives(text: str, objectives: Iterable[str]) -> list[FieldError]:
    present = text_stems(text)
    errors = []
    for objective in objectives:
        keywords, missing = objective_missing(objective, present)
        # Covered when at least half of its key words appear: paraphrase is fine, silence is not.
        if keywords and 2 * len(missing) > len(keywords):
            errors.append(
                FieldError(
                    "detailed_explanation",
                    f'does not cover the learning objective "{objective}" (missing key words: '
                    f"{', '.join(missing)}); teach it explicitly",
                    check="objective_coverage",
                )
            )
    return errors


def prose_grade(text: str, *, terms: Iterable[str] = ()) -> float:
    """Flesch-Kincaid grade of prose, with the subject's own terms replaced by a short word:
    "photosynthesis" is unavoidable in a photosynthesis course and should not count against it."""
    words = {w for term in terms for w in _words(term) if len(w) > 3}
    if words:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(words))) + r")\b", re.I)
        text = pattern.sub("term", text)
    return float(textstat.flesch_kincaid_grade(text))


def reading_applies(request: CourseRequest) -> bool:
    return request.language.startswith("en")  # Flesch-Kincaid is calibrated for English only


def prose_grade_of(section: LessonSectionContent, request: CourseRequest) -> float:
    """The section's prose grade (see prose_grade), the course's own terms discounted."""
    text = "\n\n".join([section.introduction, section.detailed_explanation, section.summary])
    terms = [request.topic, *(c.term for c in section.key_concepts)]
    return prose_grade(text, terms=terms)


def reading_band(request: CourseRequest) -> tuple[float, float]:
    low, high = settings.COURSEGEN_READING_GRADE_BANDS[request.level.value]
    return low, high


def _reading_level(
    section: LessonSectionContent, request: CourseRequest, context: Context
) -> list[FieldError]:
    if not reading_applies(request):
        return []
    grade = prose_grade_of(section, request)
    low, high = reading_band(request)
    if low <= grade <= high:
        return []
    advice = (
        "use shorter sentences and everyday words"
        if grade > high
        else "use more precise, subject-specific language"
    )
    return [
        FieldError(
            "detailed_explanation",
            f"reading level is grade {grade:.1f} (Flesch-Kincaid); a {request.level.value} course "
            f"for {request.audience} needs grade {low:g}-{high:g}: {advice}",
            check="reading_level",
        )
    ]


def lesson_text(model: LessonSectionContent) -> str:
    """Everything a lesson section teaches, for matching its objectives' words."""
    return " ".join(
        [
            model.introduction,
            model.detailed_explanation,
            model.summary,
            *(f"{c.term} {c.definition}" for c in model.key_concepts),
            *(f"{e.title} {e.description}" for e in model.examples),
        ]
    )


def check_lesson_section(
    model: LessonSectionContent, request: CourseRequest, context: Context
) -> list[FieldError]:
    objectives = context.get("learning_objectives") or []
    return _missing_objectives(lesson_text(model), objectives) + _reading_level(
        model, request, context
    )


# --- Outline and mind map -----------------------------------------------------------------------
def check_outline(
    model: CourseOutline, request: CourseRequest, context: Context
) -> list[FieldError]:
    errors = []
    if len(model.modules) != request.num_modules:
        errors.append(
            FieldError(
                "modules",
                f"has {len(model.modules)} modules; {request.num_modules} requested",
                check="outline_size",
            )
        )
    for index, module in enumerate(model.modules):
        if len(module.lessons) != request.lessons_per_module:
            errors.append(
                FieldError(
                    f"modules.{index}.lessons",
                    f"has {len(module.lessons)} lessons; {request.lessons_per_module} requested",
                    check="outline_size",
                )
            )
    return errors


def check_mind_map(model: MindMap, request: CourseRequest, context: Context) -> list[FieldError]:
    if len(model.nodes) >= request.num_modules:
        return []
    return [
        FieldError(
            "nodes",
            f"has {len(model.nodes)} nodes; it needs one per module ({request.num_modules})",
            check="mind_map_nodes",
        )
    ]


CHECKS: dict[TaskKind, Check] = {
    TaskKind.OUTLINE: check_outline,
    TaskKind.LESSON_SECTION: check_lesson_section,
    TaskKind.ASSESSMENT: check_assessment,
    TaskKind.MIND_MAP: check_mind_map,
}


def run_checks(
    kind: TaskKind, model: BaseModel, request: CourseRequest, context: Context
) -> list[FieldError]:
    check = CHECKS.get(kind)
    return check(model, request, context) if check else []


# --- Across a course ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Duplicate:
    key: str  # the assessment task's key (m2.l3) holding the later question
    index: int  # the later question's index in that assessment
    earlier_key: str
    earlier_stem: str

    def error(self) -> FieldError:
        return FieldError(
            f"questions.{self.index}.stem",
            f'near-duplicate of a question in lesson {self.earlier_key} ("{self.earlier_stem}"); '
            "ask about a different idea of this lesson",
            check="duplicate_question",
        )


def course_duplicates(
    assessments: Sequence[tuple[str, Mapping[str, Any]]], *, topic: str
) -> list[Duplicate]:
    """Near-duplicate questions across a course's assessments (in reading order), each reported
    once, on the later question; duplicates inside one assessment are its own task's concern."""
    seen: list[tuple[str, str]] = []
    seen_keys: list[str] = []  # the compared form of each seen stem, computed once
    found = []
    threshold = settings.COURSEGEN_DUPLICATE_SIMILARITY
    for key, output in assessments:
        kept = []
        for index, question in enumerate(output.get("questions", [])):
            stem = question["stem"]
            compared = utils.default_process(_stem_key(stem, topic))
            # The first earlier stem at or above the threshold (rapidfuzz scores the list in C:
            # a course has ~60 questions, so ~1,800 pairs at finalize).
            match = next(
                process.extract_iter(
                    compared,
                    seen_keys,
                    scorer=fuzz.token_sort_ratio,
                    processor=None,
                    score_cutoff=threshold,
                ),
                None,
            )
            if match is not None:
                found.append(Duplicate(key, index, *seen[match[2]]))
            else:
                kept.append((key, stem, compared))  # a duplicate will be replaced: not compared
        seen += [(k, s) for k, s, _ in kept]
        seen_keys += [c for _, _, c in kept]
    return found
