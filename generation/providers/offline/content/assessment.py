"""Content of an assessment task: questions of three types, one template each at most."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from generation.providers.offline.content.facts import Data, Facts
from generation.providers.offline.content.text import lc_first


@dataclass(frozen=True)
class _Choice:
    """A multiple-choice template: options are written to comparable lengths."""

    stem: str
    correct: str
    distractors: tuple[str, str, str]
    explanation: str
    bloom: str


@dataclass(frozen=True)
class _Claim:
    """A true/false or short-answer template."""

    stem: str
    answer: str
    explanation: str


_MULTIPLE_CHOICE = (
    _Choice(
        "Which statement best captures the purpose of {focus} within {t}?",
        "It explains how the ideas fit together so you can apply them with confidence",
        (
            "It lists facts to memorize without needing to connect them to any practice",
            "It replaces practice with one fixed recipe that always works the same way",
            "It matters only to experts, so newcomers can safely skip it entirely",
        ),
        "Understanding how the ideas connect is what lets you apply them to new cases; the other "
        "options describe memorization, rigid recipes or skipping the topic, all of which fail.",
        "understand",
    ),
    _Choice(
        'A learner working toward "{objective}" gets a surprising result. What should they do '
        "first?",
        "Compare the result with a simple baseline and check each assumption in turn",
        (
            "Start over from scratch with a completely different approach and new tools",
            "Assume the result is right because the procedure was followed exactly",
            "Ask someone else to redo the work without looking at the first attempt",
        ),
        "Checking against a baseline and testing assumptions locates the cause of the surprise; "
        "starting over, trusting the procedure blindly or delegating all throw that evidence away.",
        "apply",
    ),
    _Choice(
        "Which of these is the best evidence that someone has understood {focus}?",
        "They can explain it in their own words and apply it to a new case",
        (
            "They can repeat the textbook definition word for word from memory",
            "They have read every available resource on the subject at least once",
            "They finished the exercises quickly without checking any answers",
        ),
        "Explaining an idea in your own words and transferring it to a new case shows real "
        "understanding; recall, reading volume and speed can all exist without it.",
        "evaluate",
    ),
    _Choice(
        "Why do experienced practitioners often begin work on {focus} with a small, simple case?",
        "A small case exposes misunderstandings early, while they are cheap to fix",
        (
            "Small cases are a tradition in the field but they teach nothing new",
            "Larger cases are always wrong, so they should be avoided entirely",
            "Small cases run faster, and speed is the only thing that matters",
        ),
        "Starting small makes mistakes visible and cheap to correct before they spread; larger "
        "cases are not wrong, and neither tradition nor speed is the real reason.",
        "understand",
    ),
    _Choice(
        "When comparing two approaches to {focus}, what should guide the choice?",
        "The goal, the constraints and the trade-offs each approach brings",
        (
            "Whichever approach was learned first, since it feels most familiar",
            "The approach with the most steps, since it must be more thorough",
            "Whatever is most popular online this month, whatever the task is",
        ),
        "A sound choice weighs the goal, the constraints and the trade-offs; familiarity, "
        "complexity and popularity say nothing about fitness for the task at hand.",
        "analyze",
    ),
    _Choice(
        "Which habit most reliably improves your work on {focus} over time?",
        "Reviewing results against clear criteria and changing one thing at a time",
        (
            "Changing many things at once so that progress happens as fast as possible",
            "Avoiding all feedback until the work is completely finished and polished",
            "Relying on intuition alone and never writing down what has been tried",
        ),
        "Clear criteria and one change at a time show which change helped; changing many things, "
        "delaying feedback and keeping no notes all hide the cause of success or failure.",
        "apply",
    ),
    _Choice(
        "What is the main risk of skipping the groundwork on {focus}?",
        "Later topics turn into guesswork because the underlying ideas are missing",
        (
            "There is no risk, because later modules repeat everything from scratch",
            "The course simply takes less time to finish and nothing else changes",
            "Only assessment scores suffer, while real understanding stays the same",
        ),
        "Later lessons build on this groundwork, so skipping it leaves gaps that make later work "
        "guesswork; the course does not repeat it, and understanding suffers, not just scores.",
        "analyze",
    ),
    _Choice(
        "Which question should you ask first when applying {focus} to a new problem?",
        "What exactly am I trying to achieve, and how will I know that it worked?",
        (
            "Which tool has the most features, regardless of what the task needs?",
            "How can I finish as fast as possible without checking anything at all?",
            "What did I do last time, so that I can copy it without any changes?",
        ),
        "A clear goal and a success criterion come first, because every later decision depends "
        "on them; tool features, speed and copying past work ignore what the problem needs.",
        "apply",
    ),
    _Choice(
        "For {audience}, what makes {focus} worth learning carefully?",
        "It underpins later lessons and shows up in many everyday tasks",
        (
            "It is rarely used, so it matters only for passing the assessment",
            "It is purely historical and has no bearing on current practice",
            "It is a shortcut that removes the need to understand anything else",
        ),
        "The idea recurs throughout later lessons and in routine {t} work; it is neither rare, "
        "merely historical, nor a substitute for understanding the rest.",
        "understand",
    ),
    _Choice(
        "Which situation shows {focus} being applied well?",
        "A plan is tried on a small case, checked against criteria, then scaled up",
        (
            "A plan is applied everywhere at once and judged only by how busy it looks",
            "A plan is copied from an unrelated project without checking whether it fits",
            "A plan is changed daily based on opinion, with no record of what happened",
        ),
        "Trying small, checking against agreed criteria and only then scaling up is good practice; "
        "the other options skip the checks that reveal whether the approach works.",
        "evaluate",
    ),
)
_TRUE_FALSE = (
    _Claim(
        "True or false: understanding {focus} is only relevant to experts and can safely be "
        "skipped by {audience}.",
        "False",
        "False. The idea underpins later lessons and everyday {t} work, so skipping it leaves "
        "gaps that show up quickly in practice.",
    ),
    _Claim(
        "True or false: comparing your result with a simple baseline is a reliable way to catch "
        "mistakes in {focus}.",
        "True",
        "True. A baseline gives you a reference point, so an implausible result stands out "
        "instead of passing unnoticed.",
    ),
    _Claim(
        "True or false: being able to {objective_lc} depends on understanding the ideas, not just "
        "memorizing definitions.",
        "True",
        "True. Definitions help, but applying and explaining the idea in new situations requires "
        "understanding why it works.",
    ),
    _Claim(
        "True or false: when working on {focus}, changing several things at once makes it easier "
        "to see which change helped.",
        "False",
        "False. Changing several things at once hides which change caused the effect; change one "
        "thing at a time and note the result.",
    ),
    _Claim(
        "True or false: the ideas of {focus} connect directly to practical work later in the "
        "course.",
        "True",
        "True. Each module builds on the earlier ones, and these ideas return in later, more "
        "demanding lessons.",
    ),
    _Claim(
        "True or false: once a technique for {focus} works on one example, it is guaranteed to "
        "work on every other case.",
        "False",
        "False. Edge cases and different constraints can break a technique that worked once, so "
        "each new case needs checking.",
    ),
)
_SHORT_ANSWER = (
    _Claim(
        "In two or three sentences, explain how you would {objective_lc}.",
        "State the goal, work through a small concrete case step by step, check the result "
        "against a baseline or clear criterion, and explain each decision in your own words.",
        "A strong answer names a clear goal, uses a concrete case and includes a check; vague "
        "answers that only restate a definition miss the point.",
    ),
    _Claim(
        "Describe one common mistake people make with {focus} and how to avoid it.",
        "A common mistake is changing several things at once; avoid it by changing one thing at "
        "a time and recording the effect of each change.",
        "Any well-explained mistake with a matching habit that prevents it earns full credit, for "
        "example trusting a single example or skipping a baseline.",
    ),
    _Claim(
        "Give a short real-world example in which {focus} matters, and say why it matters there.",
        "For example, a small team planning a {t} task must get this right first, because every "
        "later decision they make depends on it.",
        "Good answers give a specific situation and connect it explicitly to the idea; a "
        "situation without that link is only half an answer.",
    ),
    _Claim(
        "Summarize the key idea of {lesson} for a colleague who is new to {t}.",
        "The key idea is to reason from clear goals and small, checked steps rather than "
        "following a fixed recipe, so that you can adapt when the situation changes.",
        "A good summary is short, accurate and free of jargon, and it shows why the idea is "
        "useful rather than only what it is called.",
    ),
    _Claim(
        "If your work on {focus} gave a result that looked wrong, what would you check first, "
        "and why?",
        "First check the assumptions and the inputs against a simple baseline, because most "
        "surprising results come from a wrong assumption rather than from the method.",
        "Answers should name a concrete first check and justify it; checking assumptions or a "
        "baseline first is the most efficient way to locate the problem.",
    ),
    _Claim(
        "Explain why {focus} matters for the rest of {module}.",
        "Later lessons in the module build on it, so understanding it now makes those lessons "
        "easier and prevents mistakes from spreading into later work.",
        "Full credit needs a clear link between this idea and later lessons; simply saying that it "
        "is important is not enough.",
    ),
)
_QUESTION_CYCLE = ("multiple_choice", "true_false", "multiple_choice", "short_answer")
_DIFFICULTY = {"beginner": 0, "intermediate": 1, "advanced": 2}
_DIFFICULTIES = ("easy", "medium", "hard")
_SHORT_ANSWER_BLOOM = {"beginner": "understand", "intermediate": "apply", "advanced": "evaluate"}


def build_assessment(facts: Facts, rng: random.Random) -> Data:
    kinds = [_QUESTION_CYCLE[i % len(_QUESTION_CYCLE)] for i in range(facts.questions)]
    # Each template is used at most once per assessment, so no two stems are alike.
    pools: dict[str, list[Any]] = {
        "multiple_choice": rng.sample(_MULTIPLE_CHOICE, len(_MULTIPLE_CHOICE)),
        "true_false": rng.sample(_TRUE_FALSE, len(_TRUE_FALSE)),
        "short_answer": rng.sample(_SHORT_ANSWER, len(_SHORT_ANSWER)),
    }
    questions = []
    for index, kind in enumerate(kinds):
        objective = facts.objectives[index % len(facts.objectives)]
        template = pools[kind][(kinds[:index].count(kind)) % len(pools[kind])]
        questions.append(_QUESTION_WRITERS[kind](facts, rng, template, objective))
    for question in questions:  # like an LMS quiz item, each question carries its lesson
        question["stem"] = f"[{facts.lesson_title}] {question['stem']}"
    return {"questions": _unique_stems(questions)}


def _question_words(facts: Facts, objective: str) -> dict[str, str]:
    return facts.words(objective=objective.rstrip("."), objective_lc=lc_first(objective))


def _explain(item: _Choice | _Claim, words: dict[str, str]) -> str:
    # Real explanations tie the answer back to the lesson goal; so do these.
    return f"{item.explanation.format(**words)} It tests the lesson goal: {words['objective_lc']}."


def _difficulty(facts: Facts, shift: int) -> str:
    return _DIFFICULTIES[min(max(_DIFFICULTY[facts.level] + shift, 0), 2)]


def _multiple_choice(facts: Facts, rng: random.Random, item: _Choice, objective: str) -> Data:
    words = _question_words(facts, objective)
    correct = item.correct.format(**words)
    options = [correct, *(d.format(**words) for d in item.distractors)]
    rng.shuffle(options)
    return {
        "type": "multiple_choice",
        "stem": item.stem.format(**words),
        "options": options,
        "correct_answer": correct,
        "explanation": _explain(item, words),
        "difficulty": _difficulty(facts, 0),
        "bloom_level": item.bloom,
        "objective": objective,
    }


def _true_false(facts: Facts, rng: random.Random, item: _Claim, objective: str) -> Data:
    del rng  # options are fixed by the schema
    words = _question_words(facts, objective)
    return {
        "type": "true_false",
        "stem": item.stem.format(**words),
        "options": ["True", "False"],
        "correct_answer": item.answer,
        "explanation": _explain(item, words),
        "difficulty": _difficulty(facts, -1),
        "bloom_level": "understand",
        "objective": objective,
    }


def _short_answer(facts: Facts, rng: random.Random, item: _Claim, objective: str) -> Data:
    del rng  # nothing to shuffle
    words = _question_words(facts, objective)
    return {
        "type": "short_answer",
        "stem": item.stem.format(**words),
        "options": [],
        "correct_answer": item.answer.format(**words),
        "explanation": _explain(item, words),
        "difficulty": _difficulty(facts, 1),
        "bloom_level": _SHORT_ANSWER_BLOOM[facts.level],
        "objective": objective,
    }


_QUESTION_WRITERS: dict[str, Callable[[Facts, random.Random, Any, str], Data]] = {
    "multiple_choice": _multiple_choice,
    "true_false": _true_false,
    "short_answer": _short_answer,
}


def _unique_stems(questions: list[Data]) -> list[Data]:
    """Past the template pools (more than 10 multiple-choice questions) stems would repeat;
    number the repeats so every stem stays distinct."""
    seen: dict[str, int] = {}
    for question in questions:
        stem = question["stem"]
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            question["stem"] = f"(Scenario {seen[stem]}) {stem}"
    return questions
