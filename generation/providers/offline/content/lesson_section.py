"""Content of a lesson-section task: introduction, explanation, key concepts, examples, summary."""

from __future__ import annotations

import random

from generation.providers.offline.content.facts import Data, Facts
from generation.providers.offline.content.rules import (
    EXPLAIN_EACH_OBJECTIVE,
    PRACTISE_EACH_OBJECTIVE,
)
from generation.providers.offline.content.text import join_words, lc_first, sentence, uc_first

_INTROS = (
    "This lesson, {lesson}, is part of {module}. It is written for {audience} at the {level} "
    "level and assumes only what earlier lessons covered. By the end you should be able to {obj0}. "
    "We start with the intuition behind {focus}, then look at how it is used in {t}, and finish "
    "with examples you can adapt to your own work.",
    "{lesson} is where {module} turns background knowledge into something you can use. Over the "
    "next few pages we look at how {focus} plays out in {t}, why it matters to {audience}, and "
    "how to work with it without falling into the usual traps. Keep one goal in mind as you read: "
    "to {obj0}.",
    "Anyone who spends time with {t} runs into {focus} sooner or later. This lesson explains it "
    "step by step for {audience}, as part of {module}. It builds toward one practical goal, to "
    "{obj0}, through plain explanations, short examples and a summary you can come back to when "
    "you need a refresher.",
)
_WHY = (
    "Start with the question this lesson answers. In {t}, understanding {focus} matters because it "
    "shapes the "
    "decisions you make before any detailed work begins. People who skip it tend to copy "
    "procedures without knowing when they apply, and they struggle as soon as a problem looks "
    "slightly different from the example they learned. People who understand it can explain their "
    "choices, notice when something is off, and adapt. That difference is why {module} spends "
    "time here before moving on.",
    "Why spend a whole lesson on {focus}? Because much of the later work in {t} quietly depends on "
    "it. When the idea is clear, new techniques feel like variations on something familiar; when "
    "it is fuzzy, every new technique feels like a separate rule to memorize. For {audience}, the "
    "payoff is practical: fewer mistakes, faster progress, and the confidence to explain why a "
    "result makes sense rather than hoping that it does.",
)
_CORE = (
    "Here is what this lesson sets out to do, in one line: {summary} Put differently, this lesson "
    "asks you to do two things: first, {obj0}; second, {obj1}. Each of these is a skill rather "
    "than a fact, so you build it by practicing on varied cases and checking your reasoning, not "
    "by rereading a definition. The two goals support each other: the first gives you a clear "
    "picture, and the second shows you where that picture earns its keep in real {t} work.",
    "The lesson summary puts the heart of the matter briefly: {summary} To make that concrete, "
    "the lesson has two aims: to {obj0}, and to {obj1}. Neither aim is reached by memorizing a "
    "sentence. You reach them by looking at several cases, asking what they have in common, and "
    "testing your explanation on a case you have not seen before. If your explanation survives "
    "that test, you understand {focus}; if it does not, you have found exactly what to study "
    "next.",
)
_HOW = (
    "In practice, working with {focus} follows a short, repeatable cycle. Begin by stating the "
    "goal in one sentence of plain language. Next, list the constraints: time, tools, the "
    "information you have and the information you lack. Then try the simplest approach that could "
    "work on a small case, and compare the outcome with what you expected. Finally, adjust one "
    "thing at a time and write down what changed. The cycle looks obvious on paper, yet it is "
    "exactly what experienced practitioners of {t} do, often without saying so.",
    "A useful way to approach {focus} is to move from the concrete to the general. Pick one small, "
    "specific case and work through it completely, noting every decision you make along the way. "
    "Then change one detail of the case and see which decisions still hold. After two or three "
    "rounds the general pattern becomes visible, and you can state it in your own words. This is "
    "slower than reading a summary, but what you learn this way in {t} tends to stick.",
)
_PITFALLS = (
    "A few mistakes come up again and again. The first is treating {focus} as a checklist rather "
    "than a way of thinking, which produces work that looks correct but does not fit the "
    "situation. The second is changing several things at once, so that when results improve or "
    "get worse nobody can say why. The third is skipping the comparison with a simple baseline. "
    "Each mistake is easy to avoid once you know to look for it, and avoiding them is much of what "
    "separates confident work in {t} from guesswork.",
    "Watch for three traps. Learners new to {focus} often trust the first result they get, without "
    "asking whether a simpler explanation fits just as well. They also tend to generalize from a "
    "single example, assuming that what worked once will work everywhere in {t}. And they rarely "
    "write down what they tried, so the same mistake gets made twice. None of these traps needs "
    "special talent to avoid; each needs only a habit, and the examples below build those habits.",
)
_CONNECT = (
    "Finally, place this lesson in the wider course. {module} builds its later lessons on the "
    "ideas introduced here, and {course} returns to them repeatedly, usually in more demanding "
    "settings. If a later topic feels hard, coming back to {focus} is often the fastest way to "
    "find the missing piece. The practical advice for {level} learners is to work through the "
    "examples below before moving on, and to explain each key concept aloud in your own words.",
    "It helps to see where this fits. {course} treats {t} as a set of connected skills, and "
    "understanding {focus} is one of the links that holds them together. You will meet it again "
    "in later lessons of {module} and beyond, each time in a slightly harder form. Treat this "
    "lesson as a foundation to return to rather than a box to tick: when something later does not "
    "make sense, the explanation is often here.",
)
_LESSON_SUMMARY_TEXTS = (
    "In short, understanding {focus} gives you a way to reason about {t} rather than a list of "
    "rules to follow. You should now be able to {objs}. Practice on small cases, compare against "
    "a simple baseline, and change one thing at a time; the next lessons build directly on these "
    "habits.",
    "To recap: this lesson explained {focus}, why it matters in {t}, and the mistakes to watch "
    "for. The goal was to {objs}. Before moving on, try the examples again without looking at the "
    "text, and note any step you could not explain in your own words.",
)
CONCEPTS = (
    (
        "Mental model",
        "A simplified picture of how {t} behaves that lets you predict an outcome "
        "before you try it, and notice quickly when reality disagrees.",
    ),
    (
        "Baseline",
        "The simplest reasonable approach or result in {t}, used as a reference point so "
        "that any improvement can be measured honestly.",
    ),
    (
        "Trade-off",
        "A choice where gaining one quality, such as speed or simplicity, costs another; "
        "much of the judgment in {t} lies in weighing these.",
    ),
    (
        "Constraint",
        "A limit on time, tools, information or resources that decides which "
        "approaches to {focus} are realistic in a given situation.",
    ),
    (
        "Feedback loop",
        "The cycle of trying something, observing the result and adjusting, which "
        "is how skill in {t} actually grows over time.",
    ),
    (
        "Edge case",
        "An unusual situation at the boundary of normal use, where a method that "
        "handles typical {t} cases often breaks.",
    ),
    (
        "Worked example",
        "A fully solved problem, shown step by step, that makes the reasoning "
        "behind {focus} visible rather than just the answer.",
    ),
    (
        "Misconception",
        "A plausible but wrong belief about {t}; naming it explicitly is one of the "
        "quickest ways to correct it.",
    ),
    (
        "Transfer",
        "Applying what you learned in one {t} situation to a new one that looks "
        "different on the surface but shares the same structure.",
    ),
    (
        "Success criterion",
        "A clear, checkable statement of what a good result looks like in {t}, "
        "agreed before the work begins rather than after.",
    ),
)
_EXAMPLES = (
    (
        "A first small task",
        "A newcomer to {t} applies {focus} to a deliberately small task. They "
        "write down the goal, try the simplest approach, and compare the result with what they "
        "expected. The gap between the two becomes the starting point for the next attempt.",
    ),
    (
        "Reviewing a colleague's work",
        "Two people review a piece of {t} work together. Instead of "
        "asking whether it looks right, they check it against the success criteria agreed at the "
        "start and ask which assumptions it relies on, turning a vague impression into fixable "
        "points.",
    ),
    (
        "Before and after",
        "A small team compares how they handled {focus} before and after "
        "studying it. Before, they changed several things at once and could not tell what helped. "
        "After, they change one thing at a time and reach a better result in fewer attempts.",
    ),
    (
        "When the standard recipe fails",
        "A learner follows a standard {t} recipe that works on the "
        "textbook example but fails on a real case. Finding the edge case responsible teaches them "
        "why the recipe works at all, and when it needs adapting.",
    ),
    (
        "Explaining it to a friend",
        "A learner explains {focus} to a friend who knows nothing about "
        "{t}. Finding simple words for each step exposes the parts they had only memorized, and "
        "those become the parts they go back and study again.",
    ),
)


# One per objective when the prompt asks for it (content/rules.py: practise_each_objective).
_PRACTICE = (
    "Work through this one step by step. First, state what it means to {objective} in a "
    "concrete {t} situation you know. Then try it on a small case, writing down each decision "
    "and the reason for it. Finally, check the result against the lesson's explanation, so that "
    "you can say why it works.",
    "Here is a worked case. Start from a familiar {t} problem and {objective}, one step at a "
    "time. Note what you expected before each step, then compare it with what happened, because "
    "the gap shows what to adjust. Repeat once with a changed detail to see the rule hold.",
)


# One paragraph per objective when the prompt asks for it (rules.py: explain_each_objective).
_OBJECTIVE_PARAGRAPHS = (
    "One goal of this lesson is to {objective}. In {t}, that means noticing the idea in a real "
    "case, naming it, and saying why it matters before you act on it. Start with a case you "
    "know well, describe what happens in your own words, and then check your description "
    "against the key concepts below.",
    "The lesson also asks you to {objective}. Think of it as a skill with steps: look at the "
    "situation in {t}, pick out what is relevant, and explain how it connects to what you "
    "already know. Doing this on two or three different cases is what turns the idea into "
    "something you can use.",
)


def _objective_paragraphs(facts: Facts, rng: random.Random) -> list[str]:
    return [
        rng.choice(_OBJECTIVE_PARAGRAPHS).format(t=facts.topic, objective=lc_first(o))
        for o in facts.objectives
    ]


def _practice_examples(facts: Facts, rng: random.Random) -> list[Data]:
    return [
        {
            "title": f"Practising: {uc_first(lc_first(objective))}",
            "description": rng.choice(_PRACTICE).format(
                t=facts.topic, objective=lc_first(objective)
            ),
        }
        for objective in facts.objectives
    ]


def build_lesson_section(facts: Facts, rng: random.Random) -> Data:
    # The summary names every objective: lesson sections must cover all of them.
    words = facts.words(objs=join_words([lc_first(o) for o in facts.objectives]))
    dropped = rng.choice((_WHY, _HOW, _PITFALLS, _CONNECT))  # four of five paragraph roles
    roles = [r for r in (_WHY, _CORE, _HOW, _PITFALLS, _CONNECT) if r is not dropped]
    lead = {"term": uc_first(facts.lesson_focus), "definition": sentence(facts.lesson_summary)}
    concepts = rng.sample(CONCEPTS, 3)
    introduction = rng.choice(_INTROS).format(**words)  # the draws keep their order
    paragraphs = [rng.choice(r).format(**words) for r in roles]
    if EXPLAIN_EACH_OBJECTIVE in facts.rules:
        paragraphs[1:1] = _objective_paragraphs(facts, rng)
    return {
        "introduction": introduction,
        "detailed_explanation": "\n\n".join(paragraphs),
        "key_concepts": [lead]
        + [{"term": t, "definition": d.format(**words)} for t, d in concepts],
        "examples": _practice_examples(facts, rng)
        if PRACTISE_EACH_OBJECTIVE in facts.rules
        else [{"title": t, "description": d.format(**words)} for t, d in rng.sample(_EXAMPLES, 2)],
        "summary": rng.choice(_LESSON_SUMMARY_TEXTS).format(**words),
    }
