"""The simulator's own outline of a course: an arc of phases (foundations, middle stages, a
capstone), module and lesson titles, objectives and summaries. It is what an outline request
returns and what every other task falls back on when its context leaves something out."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from generation.providers.offline.content.text import a_or_an, title_case
from generation.providers.offline.seeding import content_rng
from generation.schemas import TaskKind


@dataclass(frozen=True)
class Lesson:
    title: str
    focus: str  # a noun phrase for prose: "the key vocabulary of chemistry"
    summary: str
    objectives: tuple[str, ...]


@dataclass(frozen=True)
class Module:
    title: str
    focus: str
    description: str
    lessons: tuple[Lesson, ...]


@dataclass(frozen=True)
class Course:
    title: str
    description: str
    modules: tuple[Module, ...]


@dataclass(frozen=True)
class _Phase:
    """One stage of a course arc: module title phrasings, its focus, its typical lessons."""

    titles: tuple[str, ...]
    focus: str
    lessons: tuple[tuple[str, str], ...]  # (title, focus) templates


_FOUNDATIONS = _Phase(
    ("Foundations of {T}", "Getting Started with {T}", "{T} Fundamentals"),
    "the foundations of {t}",
    (
        ("What {T} Is and Why It Matters", "the scope and purpose of {t}"),
        ("Key Vocabulary of {T}", "the key vocabulary of {t}"),
        ("How {T} Developed", "the development of {t}"),
        ("Setting Up to Learn {T}", "a practical setup for {t}"),
        ("A First Look at {T} in Action", "a first worked example of {t}"),
    ),
)
_CAPSTONE = _Phase(
    ("Capstone: Bringing {T} Together", "Putting It All Together: {T}", "Your {T} Project"),
    "bringing {t} together in a project",
    (
        ("Planning Your {T} Project", "project planning in {t}"),
        ("Building Your {T} Project", "building a project in {t}"),
        ("Reviewing and Improving Your {T} Project", "reviewing and improving work in {t}"),
        ("Presenting Your {T} Project", "presenting work in {t}"),
        ("Next Steps in {T}", "next steps in {t}"),
    ),
)
_MIDDLE_PHASES = (
    _Phase(
        ("Core Concepts in {T}", "The Building Blocks of {T}", "Key Principles of {T}"),
        "the core concepts of {t}",
        (
            ("The Central Ideas of {T}", "the central ideas of {t}"),
            ("How the Parts of {T} Fit Together", "the structure of {t}"),
            ("Mental Models for {T}", "useful mental models for {t}"),
            ("Common Misconceptions about {T}", "common misconceptions about {t}"),
            ("Interpreting Results in {T}", "interpreting results in {t}"),
        ),
    ),
    _Phase(
        ("Methods and Techniques in {T}", "Working Methods for {T}", "Essential {T} Techniques"),
        "the main methods and techniques of {t}",
        (
            ("Choosing the Right {T} Technique", "choosing a suitable technique in {t}"),
            ("Step-by-Step {T} Workflows", "step-by-step workflows for {t}"),
            ("Tools of the Trade for {T}", "the main tools used in {t}"),
            ("Checking Your {T} Work", "checking work in {t}"),
            ("Documenting {T} Decisions", "documenting decisions in {t}"),
        ),
    ),
    _Phase(
        ("Applying {T} in Practice", "{T} in the Real World", "Putting {T} to Work"),
        "applying {t} to real tasks",
        (
            ("Planning a {T} Task", "task planning in {t}"),
            ("A {T} Case Study", "a realistic case study in {t}"),
            ("Adapting {T} to New Situations", "adapting to new situations in {t}"),
            ("Collaborating on {T} Work", "collaborating with others on {t}"),
            ("Measuring Success in {T}", "measuring success in {t}"),
        ),
    ),
    _Phase(
        ("Common Pitfalls in {T}", "Troubleshooting {T}", "Avoiding Mistakes in {T}"),
        "the common pitfalls of {t} and how to avoid them",
        (
            ("Diagnosing Problems in {T}", "diagnosing problems in {t}"),
            ("Edge Cases in {T}", "edge cases in {t}"),
            ("Recovering from {T} Mistakes", "recovering from mistakes in {t}"),
            ("Quality Checks for {T}", "quality checks for {t}"),
            ("Learning from {T} Failures", "learning from failures in {t}"),
        ),
    ),
    _Phase(
        ("Advanced {T}", "Deepening Your {T} Skills", "{T} Beyond the Basics"),
        "advanced work in {t}",
        (
            ("Advanced Patterns in {T}", "advanced patterns in {t}"),
            ("Scaling Up {T} Work", "scaling up work in {t}"),
            ("Optimizing {T} Approaches", "optimizing approaches to {t}"),
            ("Trade-offs in Advanced {T}", "advanced trade-offs in {t}"),
            ("Combining {T} Techniques", "combining techniques in {t}"),
        ),
    ),
    _Phase(
        ("Evaluating {T} Work", "Judging Quality in {T}", "Assessment and Feedback in {T}"),
        "evaluating {t} work",
        (
            ("Criteria for Good {T} Work", "quality criteria in {t}"),
            ("Giving Feedback on {T}", "giving feedback in {t}"),
            ("Self-Assessment in {T}", "self-assessment in {t}"),
            ("Comparing {T} Outcomes", "comparing outcomes in {t}"),
            ("Evidence and Reasoning in {T}", "evidence and reasoning in {t}"),
        ),
    ),
    _Phase(
        ("Communicating about {T}", "Explaining {T} to Others", "{T} for Teams"),
        "communicating about {t}",
        (
            ("Explaining {T} Clearly", "clear explanations of {t}"),
            ("Presenting {T} Results", "presenting results in {t}"),
            ("Writing about {T}", "writing about {t}"),
            ("{T} for Non-Specialists", "speaking to non-specialists about {t}"),
            ("Answering Questions about {T}", "answering questions about {t}"),
        ),
    ),
    _Phase(
        ("Case Studies in {T}", "Learning {T} from Real Examples", "{T} Case Studies"),
        "real case studies in {t}",
        (
            ("A Success Story in {T}", "a success story in {t}"),
            ("A Cautionary Tale in {T}", "a cautionary tale from {t}"),
            ("Comparing Two {T} Projects", "comparing two projects in {t}"),
            ("Lessons from Everyday {T}", "everyday lessons from {t}"),
            ("Analyzing a {T} Decision", "analyzing a decision in {t}"),
        ),
    ),
    _Phase(
        ("Ethics and Responsibility in {T}", "Responsible {T}", "{T} and Its Wider Impact"),
        "ethics and responsibility in {t}",
        (
            ("Risks and Responsibilities in {T}", "risks and responsibilities in {t}"),
            ("Fairness and Access in {T}", "fairness and access in {t}"),
            ("Safety Considerations in {T}", "safety considerations in {t}"),
            ("The Long-Term Impact of {T}", "the long-term impact of {t}"),
            ("Professional Standards in {T}", "professional standards in {t}"),
        ),
    ),
    _Phase(
        ("Current Trends in {T}", "The Future of {T}", "What's Next in {T}"),
        "current trends in {t}",
        (
            ("Recent Developments in {T}", "recent developments in {t}"),
            ("Emerging Tools for {T}", "emerging tools for {t}"),
            ("Open Questions in {T}", "open questions in {t}"),
            ("Staying Current with {T}", "staying current with {t}"),
            ("Where {T} Is Heading", "the future direction of {t}"),
        ),
    ),
)
# Lessons beyond a phase's own five: generic angles on the module's subject ({M} its title).
_EXTRA_LESSONS = (
    ("{M}: Worked Examples", "worked examples of {mf}"),
    ("{M}: Common Mistakes", "common mistakes with {mf}"),
    ("{M}: Hands-On Practice", "hands-on practice with {mf}"),
    ("{M}: Review and Reflection", "a review of {mf}"),
    ("{M}: Going Further", "further directions in {mf}"),
)
_COURSE_TITLES = {
    "beginner": ("{T} for Beginners", "A Practical Introduction to {T}", "{T}: A Beginner's Guide"),
    "intermediate": (
        "{T}: From Fundamentals to Practice",
        "Building Skills in {T}",
        "{T} in Practice",
    ),
    "advanced": ("Advanced {T}", "Mastering {T}", "{T}: Advanced Methods and Practice"),
}
# Phrased to read well around any noun phrase, since {focus} varies from lesson to lesson.
_OBJECTIVES = {
    "beginner": (
        "Explain {focus} in your own words",
        "Give a concrete example of {focus}",
        "Recognize common mistakes related to {focus}",
        "Describe how {focus} connects to the rest of the course",
    ),
    "intermediate": (
        "Relate {focus} to a realistic task",
        "Compare different perspectives on {focus}",
        "Diagnose common mistakes related to {focus}",
        "Explain the trade-offs involved in {focus}",
    ),
    "advanced": (
        "Evaluate competing views on {focus}",
        "Critique real work for its handling of {focus}",
        "Justify decisions about {focus} under constraints",
        "Design an exercise that builds on {focus}",
    ),
}
_LESSON_SUMMARIES = (
    "Introduces {focus} with short examples.",
    "Covers {focus} and its common pitfalls.",
    "A practical look at {focus}.",
)
_PREPOSITIONS = ("of", "in", "for", "about", "with", "from", "to")


def _phases_for(count: int) -> list[_Phase]:
    """Foundations first, a capstone last, middle stages in teaching order (cycled if needed)."""
    if count == 1:
        return [_FOUNDATIONS]
    middle = [_MIDDLE_PHASES[i % len(_MIDDLE_PHASES)] for i in range(count - 2)]
    return [_FOUNDATIONS, *middle, _CAPSTONE]


@functools.lru_cache(maxsize=64)  # every task of a job re-derives the same plan
def plan_course(topic: str, level: str, audience: str, size: tuple[int, int], seed: int) -> Course:
    # Seeded exactly like an outline request, so the fallback plan IS the outline it would write.
    rng = content_rng(seed, topic, TaskKind.OUTLINE, 0, 0)
    names = {"t": topic, "T": title_case(topic), "audience": audience, "level": level}
    modules: list[Module] = []
    for number, phase in enumerate(_phases_for(size[0]), start=1):
        repeat = (number - 2) // len(_MIDDLE_PHASES) if 1 < number < size[0] else 0
        modules.append(_plan_module(rng, phase, names, size[1], repeat))
    title = rng.choice(_COURSE_TITLES[level]).format(**names)
    description = (
        f"{a_or_an(level).capitalize()} {level} course on {topic} for {audience}: it starts with "
        f"{modules[0].focus} and ends with {modules[-1].focus}."
    )
    return Course(title, description, tuple(modules))


def _plan_module(
    rng: random.Random, phase: _Phase, names: dict[str, str], count: int, repeat: int
) -> Module:
    # Past twelve modules the arc repeats; "(Part 2)" keeps every title in the outline unique.
    part = f" (Part {repeat + 1})" if repeat else ""
    title = rng.choice(phase.titles).format(**names) + part
    focus = phase.focus.format(**names)
    picks = sorted(rng.sample(range(len(phase.lessons)), min(count, len(phase.lessons))))
    templates = [phase.lessons[i] for i in picks] + _extra_lessons(count - len(picks))
    extra = {"M": title, "mf": focus}
    lessons = tuple(
        _plan_lesson(
            rng,
            t.format(**names, **extra) + (part if "{M}" not in t else ""),
            f.format(**names, **extra),
            names,
        )
        for t, f in templates
    )
    return Module(title, focus, _module_description(focus, lessons, names), lessons)


def _extra_lessons(count: int) -> list[tuple[str, str]]:
    extras = list(_EXTRA_LESSONS[:count])
    extras += [
        (f"{{M}}: Practice Session {n}", "further practice with {mf}")
        for n in range(1, count - len(extras) + 1)
    ]
    return extras


def _plan_lesson(rng: random.Random, title: str, focus: str, names: dict[str, str]) -> Lesson:
    patterns = _OBJECTIVES[names["level"]]
    picks = sorted(rng.sample(range(len(patterns)), rng.choice((2, 2, 2, 3))))
    short = {**names, "focus": _short_focus(focus, names["t"])}
    objectives = tuple(patterns[i].format(**short) for i in picks)
    summary = rng.choice(_LESSON_SUMMARIES).format(**names, focus=focus)
    return Lesson(title, focus, summary, objectives)


def _short_focus(focus: str, topic: str) -> str:
    """Drop a trailing "of <topic>": objectives sit under a title that already names the topic,
    and real outlines keep them terse."""
    if not focus.endswith(" " + topic):
        return focus
    head = focus[: -len(topic) - 1]
    words = head.split()
    return " ".join(words[:-1]) if len(words) >= 2 and words[-1] in _PREPOSITIONS else focus


def _module_description(focus: str, lessons: Sequence[Lesson], names: dict[str, str]) -> str:
    del names  # the audience is in the course description; modules stay short like real ones
    count = "a single lesson" if len(lessons) == 1 else f"{len(lessons)} lessons"
    return f"Covers {focus} in {count}, each with examples and practice."


def plan_sketch(plan: Course) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((m.title, tuple(lesson.title for lesson in m.lessons)) for m in plan.modules)
