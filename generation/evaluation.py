"""Scores a finished course: how good it is, and what to improve (course_generation_evaluations).

The evaluator is deterministic and offline: it reads the assembled course and the task rows and
scores six criteria from 0 to 1, with feedback for each shortfall. Validation already rejects
output that breaks a rule outright; these scores measure how far above that floor the course is
(coverage of the objectives as a share, not a pass), and how much it cost to get there.

Criteria and weights (`CRITERIA`):
- first_pass: share of tasks accepted on their first provider call;
- objective_coverage: share of each lesson objective's key words the lesson teaches;
- readability: lessons inside the level's Flesch-Kincaid band, less for each grade outside
  (English only: the formula is calibrated for English, so other languages skip it);
- assessment_quality: questions free of catch-all options and of stand-out answer lengths, and a
  spread of Bloom levels across the course;
- uniqueness: questions that are not near-duplicates of an earlier one in the course;
- cost_efficiency: the share of the cost not spent on repairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from generation import checks
from generation.assembly import assemble_course
from generation.models import CourseGenerationJob, GenerationTask
from generation.rubric import HEURISTIC_EVALUATOR
from generation.schemas import CourseRequest, LessonSectionContent, Question

EVALUATOR = HEURISTIC_EVALUATOR
CRITERIA: dict[str, float] = {
    "first_pass": 0.15,
    "objective_coverage": 0.25,
    "readability": 0.15,
    "assessment_quality": 0.2,
    "uniqueness": 0.1,
    "cost_efficiency": 0.15,
}
_GRADES_TO_ZERO = 4.0  # a lesson this many grades outside its band scores 0 for readability
_BLOOM_LEVELS_WANTED = 3  # a course's questions should reach at least three Bloom levels
_FEEDBACK_PER_CRITERION = 3  # the worst few, to stay readable; the score counts them all
_REPAIR_SHARE_NOTED = 0.2  # a repair share from which the feedback mentions it


@dataclass
class Scorecard:
    criteria: dict[str, float] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)

    @property
    def overall(self) -> float:
        """The weighted mean of the criteria scored (a skipped criterion's weight is spread)."""
        weights = {name: CRITERIA[name] for name in self.criteria}
        total = sum(weights.values())
        return round(sum(self.criteria[n] * w for n, w in weights.items()) / total, 4)

    def add(self, name: str, score: float, feedback: Iterable[str] = ()) -> None:
        self.criteria[name] = round(min(1.0, max(0.0, score)), 4)
        self.feedback += list(feedback)[:_FEEDBACK_PER_CRITERION]


def evaluate_course(
    *,
    course: Mapping[str, Any],
    request: CourseRequest,
    tasks: Sequence[GenerationTask],
    invalid_replies: Mapping[int, int],
    reask_share: float,
    unique: bool = False,
) -> Scorecard:
    """Score an assembled course (`assembly.assemble_course`) made by `tasks`;
    `invalid_replies` counts each task's replies that failed validation (by task id).
    `unique`: the caller compared these very questions across the course and found no
    near-duplicate (finalize's de-duplication pass), so they are not compared again."""
    card = Scorecard()
    lessons = [
        Lesson(
            key=lesson["key"],
            objectives=lesson["learning_objectives"],
            section=LessonSectionContent.model_validate(lesson["section"]),
            assessment=lesson["assessment"],
        )
        for module in course["modules"]
        for lesson in module["lessons"]
    ]
    card.add(*_first_pass(tasks, invalid_replies))
    if checks.reading_applies(request):  # both are tuned for English words and prose
        card.add(*_objective_coverage(lessons))
        card.add(*_readability(lessons, request))
    card.add(*_assessment_quality(lessons))
    card.add(*(("uniqueness", 1.0, []) if unique else _uniqueness(lessons, request.topic)))
    card.add(
        "cost_efficiency",
        1.0 - reask_share,
        [f"{reask_share:.0%} of the cost went on repairs"]
        if reask_share >= _REPAIR_SHARE_NOTED
        else [],
    )
    return card


def evaluate_job(
    *,
    job: CourseGenerationJob,
    tasks: Sequence[GenerationTask],
    invalid_replies: Mapping[int, int],
    unique: bool = False,
) -> Scorecard:
    if job.course is None:
        raise ValueError(f"job {job.id} has no assembled course to evaluate")
    course = job.course
    if course.get("held"):  # score what was generated, held parts included (staff see it)
        course = assemble_course(job=job, tasks=list(tasks), withhold=False)
    return evaluate_course(
        course=course,
        request=job.course_request,
        tasks=tasks,
        invalid_replies=invalid_replies,
        reask_share=job.reask_share,
        unique=unique,
    )


@dataclass(frozen=True)
class Lesson:
    key: str
    objectives: list[str]
    section: LessonSectionContent
    assessment: Mapping[str, Any]

    @property
    def questions(self) -> list[Question]:
        return [Question.model_validate(q) for q in self.assessment.get("questions", [])]


# --- Criteria: each returns its name, a score and feedback -----------------------------------
Scored = tuple[str, float, list[str]]


def _first_pass(tasks: Sequence[GenerationTask], invalid_replies: Mapping[int, int]) -> Scored:
    """Transport retries, deferrals and regenerations are not the content's fault: only
    replies that failed validation count against it."""
    repaired = sorted(
        (t for t in tasks if invalid_replies.get(t.pk, 0)), key=lambda t: -invalid_replies[t.pk]
    )
    share = 1.0 - len(repaired) / len(tasks) if tasks else 1.0
    feedback = [
        f"{t.kind} {t.key}: {invalid_replies[t.pk]} invalid repl"
        f"{'y' if invalid_replies[t.pk] == 1 else 'ies'} repaired"
        for t in repaired
    ]
    return "first_pass", share, feedback


def _objective_coverage(lessons: Sequence[Lesson]) -> Scored:
    scores: list[float] = []
    gaps: list[tuple[float, str]] = []
    for lesson in lessons:
        stems = checks.text_stems(checks.lesson_text(lesson.section))
        for objective in lesson.objectives:
            keywords, missing = checks.objective_missing(objective, stems)
            if not keywords:
                continue
            covered = 1.0 - len(missing) / len(keywords)
            scores.append(covered)
            if missing:
                gaps.append(
                    (
                        covered,
                        f'lesson {lesson.key} covers {covered:.0%} of "{objective}" '
                        f"(missing: {', '.join(missing)})",
                    )
                )
    return "objective_coverage", _mean(scores), [text for _, text in sorted(gaps)]


def _readability(lessons: Sequence[Lesson], request: CourseRequest) -> Scored:
    low, high = checks.reading_band(request)
    scores, misses = [], []
    for lesson in lessons:
        grade = checks.prose_grade_of(lesson.section, request)
        outside = max(low - grade, grade - high, 0.0)
        scores.append(1.0 - outside / _GRADES_TO_ZERO)
        if outside:
            misses.append(
                (
                    -outside,
                    f"lesson {lesson.key} reads at grade {grade:.1f}; "
                    f"a {request.level.value} course needs {low:g}-{high:g}",
                )
            )
    return "readability", _mean(scores), [text for _, text in sorted(misses)]


def _assessment_quality(lessons: Sequence[Lesson]) -> Scored:
    by_lesson = [(lesson.key, lesson.questions) for lesson in lessons]
    count = sum(len(questions) for _, questions in by_lesson)
    flawed = [
        f"lesson {key} question {index + 1}: {errors[0].message}"
        for key, questions in by_lesson
        for index, question in enumerate(questions)
        if (errors := checks.question_flaws(index, question))
    ]
    clean = 1.0 - len(flawed) / count if count else 1.0
    levels = {question.bloom_level for _, questions in by_lesson for question in questions}
    spread = min(1.0, len(levels) / _BLOOM_LEVELS_WANTED) if count else 1.0
    if spread < 1.0:  # first: one line about the course before the per-question ones
        flawed.insert(
            0,
            f"questions reach {len(levels)} Bloom level(s); aim for {_BLOOM_LEVELS_WANTED} or more",
        )
    return "assessment_quality", 0.8 * clean + 0.2 * spread, flawed


def _uniqueness(lessons: Sequence[Lesson], topic: str) -> Scored:
    assessments = [(lesson.key, lesson.assessment) for lesson in lessons]
    count = sum(len(a.get("questions", [])) for _, a in assessments)
    duplicates = checks.course_duplicates(assessments, topic=topic)
    feedback = [
        f'lesson {d.key} question {d.index + 1} repeats lesson {d.earlier_key}: "{d.earlier_stem}"'
        for d in duplicates
    ]
    return "uniqueness", 1.0 - len(duplicates) / count if count else 1.0, feedback


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 1.0
