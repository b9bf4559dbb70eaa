"""What the exports say: every lesson, the answers, the mind map, and model text kept as data."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest

from generation.exports import course_from_document, course_of_job, render_course
from generation.exports.mindmap import mind_map_svg
from generation.exports.text import rich_html
from generation.models import CourseGenerationJob
from generation.regeneration import task_regenerate
from generation.schemas import TaskKind
from tests.courses import HOSTILE, finished_job, make_hostile

pytestmark = pytest.mark.django_db(transaction=True)

# Every element the course template and the sanitiser's allow-list can produce.
EXPECTED_TAGS = {
    "html", "head", "meta", "title", "link", "style", "body", "a", "div", "nav", "details",
    "summary", "ol", "ul", "li", "main", "header", "h1", "h2", "h3", "h4", "h5", "p", "dl", "dt",
    "dd", "section", "figure", "figcaption", "svg", "g", "rect", "text", "tspan", "path", "article",
    "aside", "strong", "em", "span", "footer", "code", "pre", "blockquote", "br", "hr", "h6",
}  # fmt: skip


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]


def _markup(html: str) -> _Markup:
    parser = _Markup()
    parser.feed(html)
    return parser


def assert_inert(html: str) -> None:
    """No element, attribute or URL in `html` that could run script or fetch anything."""
    markup = _markup(html)
    assert markup.tags <= EXPECTED_TAGS, markup.tags - EXPECTED_TAGS
    handlers = [(t, n) for t, n, _ in markup.attributes if n.lower().startswith("on")]
    assert handlers == []
    urls = [v for _, n, v in markup.attributes if n in {"href", "src", "action", "xlink:href"}]
    assert not [u for u in urls if re.match(r"\s*(javascript|vbscript|data:text)", u, re.I)]
    assert not [u for u in urls if re.match(r"\s*(https?:)?//", u)]  # nothing fetched from afar


@pytest.fixture
def job(teacher: Any, base_class: Any) -> CourseGenerationJob:
    return finished_job(teacher, base_class)


def test_the_html_export_holds_every_lesson_and_answer_and_nothing_else(
    job: CourseGenerationJob,
) -> None:
    course = course_of_job(job)
    html = render_course(course, "html").decode()

    assert_inert(html)
    for lesson in course.lessons:
        assert f'id="{lesson.anchor}"' in html
        for question in lesson.questions:
            assert f'<li id="{question.identifier}">' in html
    assert html.count('<details class="answer">') == len(course.questions)
    assert html.count("<script") == 0
    assert 'href="/' not in html  # no links back to the server in a downloaded file


def test_the_markdown_export_holds_every_lesson_with_its_answers(
    job: CourseGenerationJob,
) -> None:
    course = course_of_job(job)
    text = render_course(course, "md").decode()

    assert text.startswith(f"# {course.title}\n")
    for lesson in course.lessons:
        assert f"### Lesson {lesson.number}: " in text
        assert lesson.explanation.split("\n")[0] in text
        assert lesson.brain_byte is not None and lesson.brain_byte.script[:80] in text
    keyed = [q for q in course.questions if q.correct_option is not None]
    for question in keyed:
        option = question.correct_option
        assert option is not None
        assert f"**Answer:** {option.identifier}. " in text
    assert text.count("**Model answer:**") == len(course.questions) - len(keyed)


def test_a_hostile_course_stays_text_in_the_page_and_every_html_export(
    job: CourseGenerationJob,
) -> None:
    course = course_of_job(make_hostile(job))
    html = render_course(course, "html").decode()

    assert_inert(html)
    assert "&lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt;Rivers" in html
    assert 'href="javascript' not in html and "<iframe" not in html
    assert "<strong>bold</strong>" in html  # Markdown from the model still renders
    assert "[this link](javascript:alert('link'))" in html  # left as text, no link
    markdown = render_course(course, "md").decode()
    assert "<script>" not in markdown and "<iframe" not in markdown
    assert "&lt;iframe" in markdown


def test_the_mind_map_is_well_formed_svg_with_every_node() -> None:
    document = {
        "mind_map": {
            "central_topic": "Water cycle",
            "nodes": [
                {"label": f"Branch {b}", "children": [{"label": f"Leaf {b}.{n}"} for n in range(3)]}
                for b in range(5)
            ]
            + [
                {"label": "A label far too long " * 6, "children": [{"label": HOSTILE["mind_map"]}]}
            ],
        }
    }
    course = course_from_document(document)
    assert course.mind_map is not None

    svg = mind_map_svg(course.mind_map)
    root = ET.fromstring(svg)  # well-formed XML, the hostile label included

    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(root.findall(".//s:g[@class='mm-node mm-depth-1']", ns)) == 6
    assert len(root.findall(".//s:g[@class='mm-node mm-depth-2']", ns)) == 16
    assert len(root.findall(".//s:path", ns)) == 22  # one link per node
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert ("A label far too long " * 6).strip() in titles  # the full text, though cut short
    assert HOSTILE["mind_map"] in titles  # as text: the parser saw no <script> element
    assert root.findall(".//s:script", ns) == []
    assert "…" in "".join(root.itertext())


def test_rich_text_keeps_markdown_and_drops_everything_active() -> None:
    html = str(rich_html("1. one\n2. *two*\n\n<script>x</script> [a](https://example.org)"))
    assert "<ol>" in html and "<em>two</em>" in html
    assert "&lt;script&gt;" in html
    assert 'href="https://example.org"' in html and 'rel="noopener noreferrer nofollow"' in html
    assert (
        str(rich_html("[x](ftp://example.org/a)"))
        == '<p><a rel="noopener noreferrer nofollow">x</a></p>\n'
    )


def _paragraphs(section: dict[str, Any]) -> set[str]:
    return {
        p for key in ("introduction", "detailed_explanation") for p in section[key].split("\n\n")
    }


def test_exports_use_the_current_version_of_a_regenerated_task(
    job: CourseGenerationJob, teacher: Any
) -> None:
    task = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l2")
    old = _paragraphs(task.output or {})

    task_regenerate(task_id=task.pk, instruction="Use simpler examples", by=teacher)

    job.refresh_from_db()
    task.refresh_from_db()
    new = _paragraphs(task.output or {})
    assert task.versions.count() == 2
    gone, added = sorted(old - new), sorted(new - old)
    assert gone and added
    course = course_of_job(job)
    markdown = render_course(course, "md").decode()
    html = render_course(course, "html").decode()
    for paragraph in added:
        assert paragraph in markdown and str(rich_html(paragraph)).strip() in html
    for paragraph in gone:
        assert paragraph not in markdown and str(rich_html(paragraph)).strip() not in html
