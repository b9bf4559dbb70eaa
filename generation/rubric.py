"""The quality judge's rubric (`llm-judge-v1`): criteria for teaching, the evaluation steps the
judge follows for each (G-Eval style), the 1-5 anchors, and the structured verdict it returns.

The rubric is data shared by three readers: the judge's prompt (generation/quality/prompt.py),
the offline simulator's judge (generation/providers/offline/judge.py, which computes a verdict
from checks it can make, and is labelled as a simulation), and the reports that turn verdicts
into 0-1 scores. A verdict scores one lesson: its section and its assessment together, since
"objectives taught" asks whether each objective is explained, practised and assessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

JUDGE_EVALUATOR = "llm-judge-v1"
HEURISTIC_EVALUATOR = "heuristic-v1"  # generation/evaluation.py, which scores every course
HUMAN_EVALUATOR = "human"
MIN_SCORE, MAX_SCORE = 1, 5


# What a teacher can flag with a rating (POST /api/jobs/{id}/feedback/).
FEEDBACK_FLAGS: dict[str, str] = {
    "factually_wrong": "Factually wrong",
    "wrong_level": "Wrong level for the audience",
    "objective_not_covered": "An objective is not covered",
    "poor_questions": "Poor or wrong questions",
    "unclear": "Unclear or badly ordered",
    "inappropriate": "Inappropriate content",
    "other": "Other",
}


class Criterion(StrEnum):
    OBJECTIVES_TAUGHT = "objectives_taught"
    ACCURACY = "accuracy"
    AUDIENCE_FIT = "audience_fit"
    QUESTION_QUALITY = "question_quality"
    CLARITY_EXAMPLES = "clarity_examples"


class Part(StrEnum):
    """Which task of a lesson a criterion's problems usually live in (for targeted regeneration)."""

    SECTION = "section"
    QUESTIONS = "questions"


@dataclass(frozen=True)
class CriterionSpec:
    title: str
    question: str  # what the criterion asks, in one line
    steps: tuple[str, ...]  # the evaluation steps, in order
    anchors: tuple[str, str, str, str, str]  # what 1, 2, 3, 4 and 5 mean
    part: Part  # where its problems are fixed when the evidence does not say


RUBRIC: dict[Criterion, CriterionSpec] = {
    Criterion.OBJECTIVES_TAUGHT: CriterionSpec(
        title="Objectives taught",
        question="Is each learning objective explained, practised and assessed?",
        steps=(
            "List the lesson's learning objectives.",
            "For each objective, find where the section explains it (not merely names it).",
            "For each objective, find an example or activity where the learner practises it.",
            "For each objective, find a question that assesses it.",
            "Score by the weakest objective: one objective never explained caps the score at 2.",
        ),
        anchors=(
            "Most objectives are neither explained nor assessed.",
            "At least one objective is only named, never explained.",
            "Every objective is explained, but some are not practised or not assessed.",
            "Every objective is explained and assessed; practice is thin for one of them.",
            "Every objective is explained, practised and assessed.",
        ),
        part=Part.SECTION,
    ),
    Criterion.ACCURACY: CriterionSpec(
        title="Accuracy",
        question="Is everything stated true, and is every answer key right?",
        steps=(
            "Read each factual claim of the section and check it against what you know.",
            "For each question, solve it yourself before reading the key.",
            "Compare your answer with the key and with the explanation.",
            "Note overstatements (always, never, only) that make a true idea false.",
            "Any false statement or wrong key scores at most 2.",
        ),
        anchors=(
            "Several false statements or wrong keys.",
            "One false statement or one wrong answer key.",
            "No clear error, but some claims are misleading or overstated.",
            "Accurate, with a minor imprecision.",
            "Entirely accurate; every key is right and its explanation supports it.",
        ),
        part=Part.SECTION,
    ),
    Criterion.AUDIENCE_FIT: CriterionSpec(
        title="Fit to audience and level",
        question="Do vocabulary, sentence length and assumed knowledge suit the audience and "
        "level?",
        steps=(
            "Note the stated audience and level.",
            "Find words and terms the audience would not know, and check they are defined.",
            "Judge sentence length and density against the level.",
            "Check that the lesson assumes only what the audience can be expected to know.",
        ),
        anchors=(
            "Written for a different audience altogether.",
            "Frequent undefined jargon or a clearly wrong level.",
            "Mostly suitable, with stretches that are too hard or too simple.",
            "Suitable, with one or two undefined terms.",
            "Exactly right for the audience and level throughout.",
        ),
        part=Part.SECTION,
    ),
    Criterion.QUESTION_QUALITY: CriterionSpec(
        title="Question quality",
        question="Does each question have one defensible answer, plausible distractors, and "
        "assess an objective rather than trivia?",
        steps=(
            "For each question, check that exactly one option is defensibly correct.",
            "Check that each distractor is plausible to a learner with a misconception.",
            "Check that the question assesses one of the lesson's objectives, not trivia.",
            "Check that no two questions ask the same thing.",
        ),
        anchors=(
            "Most questions are flawed.",
            "A question with two correct options, a duplicate, or mostly trivia.",
            "Answerable, but with weak distractors or loosely tied to the objectives.",
            "Good questions, one weak distractor.",
            "Every question is sound, fair and tied to an objective.",
        ),
        part=Part.QUESTIONS,
    ),
    Criterion.CLARITY_EXAMPLES: CriterionSpec(
        title="Clarity and examples",
        question="Is the explanation clear and well ordered, with concrete, worked examples?",
        steps=(
            "Check that ideas come in a sensible order, one idea per paragraph.",
            "Check that each new term is defined when it first appears.",
            "Check that the examples are concrete and show the reasoning, not only a result.",
        ),
        anchors=(
            "Confusing, with no usable example.",
            "Hard to follow, or examples that are vague.",
            "Clear enough; examples present but thin.",
            "Clear, with good examples; minor lapses.",
            "Very clear, with concrete worked examples that show the reasoning.",
        ),
        part=Part.SECTION,
    ),
}


# --- The structured verdict -------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CriterionScore(_Strict):
    # Reasoning before the number: a model writes the fields in order (G-Eval's steps first).
    justification: str = Field(min_length=1, max_length=800)
    evidence: list[str] = Field(
        max_length=3, description="Short quotations from the lesson, copied exactly."
    )
    score: int = Field(ge=MIN_SCORE, le=MAX_SCORE)


class LessonVerdict(_Strict):
    """What the judge returns for one lesson (its section and its questions)."""

    objectives_taught: CriterionScore
    accuracy: CriterionScore
    audience_fit: CriterionScore
    question_quality: CriterionScore
    clarity_examples: CriterionScore
    improvement: str = Field(
        min_length=1,
        max_length=800,
        description="The most important change to make, written as an instruction to the author.",
    )

    def score_of(self, criterion: Criterion) -> CriterionScore:
        score: CriterionScore = getattr(self, criterion.value)
        return score

    def normalised(self) -> dict[str, float]:
        """Each criterion's score on 0-1 (1 -> 0, 5 -> 1)."""
        return {c.value: to_unit(self.score_of(c).score) for c in Criterion}

    @property
    def overall(self) -> float:
        """The unweighted mean of the criteria, on 0-1."""
        values = self.normalised().values()
        return round(sum(values) / len(values), 4)


def to_unit(score: float) -> float:
    """A 1-5 score on 0-1."""
    return round((score - MIN_SCORE) / (MAX_SCORE - MIN_SCORE), 4)
