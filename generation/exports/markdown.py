"""The course as one Markdown document (CommonMark; answers under each lesson's questions).

Long model text keeps its own Markdown, with raw HTML made inert (`<` as `&lt;`), so a renderer
that allows HTML in Markdown still shows it as text. Short fields are escaped as literal text.
"""

from __future__ import annotations

from generation.exports.document import Course, Lesson, Module, Question
from generation.exports.text import duration, md_block, md_inline


def _question(q: Question) -> list[str]:
    lines = [f"{q.number}. {md_inline(q.stem)}"]
    lines += [f"    - {o.identifier}. {md_inline(o.text)}" for o in q.options]
    answer = q.correct_option
    if answer is not None:
        lines.append(f"\n    **Answer:** {answer.identifier}. {md_inline(answer.text)}")
    else:
        lines.append(f"\n    **Model answer:** {md_inline(q.correct_answer)}")
    if q.explanation:
        lines.append(f"\n    *Why:* {md_inline(q.explanation)}")
    return [*lines, ""]


def _lesson(lesson: Lesson) -> list[str]:
    out = [f"### Lesson {lesson.number}: {md_inline(lesson.title)}", ""]
    if lesson.summary:
        out += [f"*{md_inline(lesson.summary)}*", ""]
    if lesson.objectives:
        out += ["**By the end of this lesson you can:**", ""]
        out += [f"- {md_inline(o)}" for o in lesson.objectives] + [""]
    for heading, text in (
        ("Introduction", lesson.introduction),
        ("Explanation", lesson.explanation),
    ):
        if text:
            out += [f"#### {heading}", "", md_block(text), ""]
    if lesson.key_concepts:
        out += ["#### Key concepts", ""]
        out += [f"- **{md_inline(t)}**: {md_inline(d)}" for t, d in lesson.key_concepts] + [""]
    if lesson.examples:
        out += ["#### Examples", ""]
        for title, description in lesson.examples:
            out += [f"**{md_inline(title)}**", "", md_block(description), ""]
    if lesson.section_summary:
        out += ["#### Summary", "", md_block(lesson.section_summary), ""]
    if lesson.brain_byte:
        spoken = duration(lesson.brain_byte.estimated_seconds)
        out += [f"#### Brain Byte: {md_inline(lesson.brain_byte.title)} ({spoken})", ""]
        out += [
            f"> {line}" if line else ">" for line in md_block(lesson.brain_byte.script).split("\n")
        ]
        out.append("")
    if lesson.questions:
        out += ["#### Check your understanding", ""]
        for q in lesson.questions:
            out += _question(q)
    return out


def _module(module: Module) -> list[str]:
    out = [f"## Module {module.position}: {md_inline(module.title)}", ""]
    if module.description:
        out += [md_block(module.description), ""]
    for lesson in module.lessons:
        out += _lesson(lesson)
    if module.summary or module.key_takeaways:
        out += [f"### Module {module.position} in brief", ""]
        if module.summary:
            out += [md_block(module.summary), ""]
        out += [f"- {md_inline(t)}" for t in module.key_takeaways] + [""]
    return out


def _mind_map(course: Course) -> list[str]:
    if course.mind_map is None:
        return []
    out = ["## Mind map", "", f"- **{md_inline(course.mind_map.label)}**"]
    stack = [(child, 1) for child in reversed(course.mind_map.children)]
    while stack:
        node, depth = stack.pop()
        out.append(f"{'  ' * depth}- {md_inline(node.label)}")
        stack += [(child, depth + 1) for child in reversed(node.children)]
    return [*out, ""]


def _head(course: Course) -> list[str]:
    out = [f"# {md_inline(course.title)}", ""]
    if course.description:
        out += [md_block(course.description), ""]
    facts = [
        ("Topic", course.topic),
        ("Audience", course.audience),
        ("Level", course.level),
        ("Time", f"about {course.estimated_hours:g} hours" if course.estimated_hours else ""),
        ("Categories", ", ".join(course.categories)),
        ("Tags", ", ".join(course.tags)),
    ]
    out += [f"- **{name}:** {md_inline(value)}" for name, value in facts if value] + [""]
    out += ["## Contents", ""]
    for module in course.modules:
        out.append(f"- Module {module.position}: {md_inline(module.title)}")
        out += [f"  - {lesson.number} {md_inline(lesson.title)}" for lesson in module.lessons]
    return [*out, ""]


def course_markdown(course: Course) -> str:
    lines = _head(course) + _mind_map(course)
    for module in course.modules:
        lines += _module(module)
    return "\n".join(lines).rstrip() + "\n"


def render(course: Course) -> bytes:
    return course_markdown(course).encode("utf-8")
