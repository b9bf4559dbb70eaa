"""The PDF export read back with pypdf: its page count, its text, and its print layout."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pypdf import PdfReader

from generation import exports
from generation.exports import course_of_job, render_course
from generation.regeneration import task_regenerate
from generation.schemas import TaskKind
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog
from tests.courses import HOSTILE, finished_job, make_hostile

pytestmark = pytest.mark.django_db(transaction=True)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_pdf_has_every_lesson_answer_and_page_number(teacher: Any, base_class: Any) -> None:
    job = finished_job(teacher, base_class, num_modules=2, lessons_per_module=1)
    course = course_of_job(job)

    reader = PdfReader(io.BytesIO(render_course(course, "pdf")))

    pages = [_words(page.extract_text()) for page in reader.pages]
    total = len(pages)
    assert total >= 2 + len(course.modules)  # contents, mind map, one page break per module
    for number, text in enumerate(pages, start=1):
        assert text.endswith(f"{number} / {total}"), (number, text[-40:])  # the page footer
    assert reader.metadata is not None and reader.metadata.title == course.title
    everything = " ".join(pages)
    for module in course.modules:
        # Each module starts a page (print styles: break-before), its heading at the top.
        heading = _words(f"Module {module.position}: {module.title}")
        assert any(text.startswith(heading) for text in pages), heading
    for lesson in course.lessons:
        assert _words(f"Lesson {lesson.number}: {lesson.title}") in everything
        assert _words(lesson.introduction)[:120] in everything
        for question in lesson.questions:
            assert _words(question.stem)[:80] in everything
            option = question.correct_option
            answer = f"Answer: {option.identifier}." if option else "Model answer:"
            assert answer in everything  # printed, not hidden behind a click
            assert _words(question.explanation)[:60] in everything
    assert "Mind map" in everything and course.topic in everything


def test_a_hostile_course_prints_as_text(teacher: Any, base_class: Any) -> None:
    job = make_hostile(finished_job(teacher, base_class))

    reader = PdfReader(io.BytesIO(render_course(course_of_job(job), "pdf")))

    everything = _words(" ".join(page.extract_text() for page in reader.pages))
    assert _words(HOSTILE["title"]) in everything
    assert "A trap" in everything
    links = [
        annotation.get_object().get("/A", {}).get("/URI")
        for page in reader.pages
        for annotation in page.get("/Annots") or []
    ]
    assert [uri for uri in links if uri is not None] == []  # contents links are internal only
    assert "/JavaScript" not in str(reader.trailer["/Root"])


def test_a_pdf_is_made_once_per_version_of_the_course(
    teacher: Any, base_class: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = finished_job(teacher, base_class)
    made: list[str] = []
    render = exports.render_course

    def counting(course: Any, name: str) -> bytes:
        made.append(name)
        return render(course, name)

    monkeypatch.setattr(exports, "render_course", counting)

    first = exports.course_export(job=job, export_format_name="pdf")
    again = exports.course_export(job=job, export_format_name="pdf")
    assert made == ["pdf"] and again.content == first.content  # the second from the cache
    exports.course_export(job=job, export_format_name="md")
    exports.course_export(job=job, export_format_name="md")
    assert made == ["pdf", "md", "md"]  # fast formats are made every time

    task = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l1")
    task_regenerate(task_id=task.pk, by=teacher)
    job.refresh_from_db()
    newer = exports.course_export(job=job, export_format_name="pdf")
    assert made == ["pdf", "md", "md", "pdf"] and newer.content != first.content
    flush_all()
    logged = CourseGenerationLog.objects.filter(event="course.exported", data__format="pdf")
    assert sorted(row.data["cached"] for row in logged) == [False, False, True]
