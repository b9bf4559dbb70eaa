"""The course page and the HTML export as a person meets them: headless Chromium (Debian's
/usr/bin/chromium under playwright-core), screenshots in artifacts/screenshots/, every lesson's
text on screen, no console errors, nothing fetched from elsewhere, and a hostile course inert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from generation.exports import course_of_job, render_course
from generation.exports.document import Course
from generation.models import CourseGenerationJob
from tests.browser import chromium_or_skip, run_node, screenshot_path
from tests.courses import HOSTILE, finished_job, make_hostile

pytestmark = pytest.mark.django_db(transaction=True)


def _words(text: str) -> str:
    return " ".join(text.split())


def _assert_every_lesson_on_screen(course: Course, text: str) -> None:
    screen = _words(text)
    for lesson in course.lessons:
        assert _words(lesson.title) in screen, lesson.key
        for part in (lesson.introduction, lesson.explanation, lesson.section_summary):
            assert _words(part.split("\n\n")[0])[:200] in screen, lesson.key
        assert lesson.brain_byte is not None
        assert _words(lesson.brain_byte.script)[:200] in screen
        for question in lesson.questions:
            assert _words(question.stem) in screen
            # Hidden until asked: the explanation is in a closed <details>.
            assert _words(question.explanation) not in screen


def _assert_clean(page: dict[str, Any]) -> None:
    assert page["consoleErrors"] == [] and page["pageErrors"] == [], page
    assert page["dialogs"] == [] and page["external"] == []
    assert page["scripts"] == 0 and page["handlers"] == [] and page["jsLinks"] == []


def _session_cookie(job: CourseGenerationJob) -> list[dict[str, str]]:
    client = Client()
    client.force_login(job.owner)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [
        {"name": settings.SESSION_COOKIE_NAME, "value": key, "domain": "127.0.0.1", "path": "/"}
    ]


@pytest.fixture
def job(teacher: Any, base_class: Any) -> CourseGenerationJob:
    return finished_job(teacher, base_class)


def test_it_renders_the_course_page_on_a_desktop_and_a_phone(
    job: CourseGenerationJob, live_server: Any
) -> None:
    binary = chromium_or_skip()
    url = f"{live_server.url.replace('localhost', '127.0.0.1')}/courses/{job.pk}/"
    desktop = screenshot_path("course-page-desktop.png")
    phone = screenshot_path("course-page-phone.png")
    spec = {
        "chromium": binary,
        "pages": [
            {
                "url": url,
                "cookies": _session_cookie(job),
                "shots": [
                    {"path": str(desktop), "width": 1366, "height": 1600},
                    {"path": str(phone), "width": 390, "height": 844},
                    {"width": 320, "height": 640},  # the narrowest phones
                ],
            }
        ],
    }

    page = run_node("probe_pages.mjs", spec)["pages"][0]

    assert page["status"] == 200
    _assert_clean(page)
    course = course_of_job(job)
    assert page["title"] == course.title
    _assert_every_lesson_on_screen(course, page["text"])
    # No sideways scrolling of the page anywhere: the wide mind map scrolls in its own box.
    assert page["overflowX"] == [0, 0, 0]
    mind_map = page["svgs"][0]
    assert mind_map["nodes"] > 5 and mind_map["width"] > 600
    assert desktop.stat().st_size > 20_000 and phone.stat().st_size > 10_000


def test_it_renders_the_html_export_from_a_file_with_nothing_else(
    job: CourseGenerationJob, tmp_path: Path
) -> None:
    binary = chromium_or_skip()
    course = course_of_job(job)
    exported = tmp_path / "course.html"
    exported.write_bytes(render_course(course, "html"))
    shot = screenshot_path("course-html-export.png")
    spec = {
        "chromium": binary,
        "pages": [
            {
                "url": exported.as_uri(),
                "shots": [{"path": str(shot), "width": 1280, "height": 1400}],
            }
        ],
    }

    page = run_node("probe_pages.mjs", spec)["pages"][0]

    _assert_clean(page)
    _assert_every_lesson_on_screen(course, page["text"])
    assert shot.stat().st_size > 20_000


def test_a_hostile_course_runs_no_script_in_the_page_or_the_export(
    job: CourseGenerationJob, live_server: Any, tmp_path: Path
) -> None:
    binary = chromium_or_skip()
    make_hostile(job)
    exported = tmp_path / "hostile.html"
    exported.write_bytes(render_course(course_of_job(job), "html"))
    url = f"{live_server.url.replace('localhost', '127.0.0.1')}/courses/{job.pk}/"
    shot = screenshot_path("course-page-hostile.png")
    spec = {
        "chromium": binary,
        "pages": [
            {
                "url": url,
                "cookies": _session_cookie(job),
                "shots": [{"path": str(shot), "width": 1280, "height": 1200}],
            },
            {"url": exported.as_uri()},
        ],
    }

    pages = run_node("probe_pages.mjs", spec)["pages"]

    for page in pages:
        _assert_clean(page)  # no alert() fired, no script, no handler, no javascript: link
        screen = _words(page["text"])
        assert _words(HOSTILE["title"]) in screen  # shown as the text it is
        assert "A trap" in screen
