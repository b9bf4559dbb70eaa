"""The course as HTML: the course page, the self-contained HTML export, the PDF's source.

One template (templates/courses/course.html) serves all three, so what a teacher reads online,
downloads and prints is the same document. Styles are inline and the mind map is an inline SVG,
so the file needs nothing else: no CDN, no script, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from generation.exports.document import Course
from generation.exports.mindmap import mind_map_svg

QUIZ_TEMPLATE = "courses/_quiz.html"


def course_context(course: Course, *, printable: bool = False, **extra: Any) -> dict[str, Any]:
    root = course.mind_map
    svg = mind_map_svg(root, fluid=printable) if root is not None else ""
    return {
        "course": course,
        "mind_map_svg": mark_safe(svg),  # built by mind_map_svg, every label escaped
        "quiz_template": QUIZ_TEMPLATE,
        "printable": printable,
        "downloads": (),
        **extra,
    }


def course_html(
    course: Course, *, downloads: Sequence[dict[str, str]] = (), printable: bool = False
) -> str:
    """The course page; `downloads` are links to its exports (none in an exported file)."""
    context = course_context(course, downloads=downloads, printable=printable)
    return render_to_string("courses/course.html", context)


def render(course: Course) -> bytes:
    return course_html(course).encode("utf-8")
