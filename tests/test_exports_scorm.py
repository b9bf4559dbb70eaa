"""The SCORM 1.2 package played as a learner would: headless Chromium, scorm-again (npm) as the
LMS runtime, a scripted learner who reads every page, answers the quizzes (some answers wrong),
leaves half-way and comes back. The LMS's record must say `completed` with the expected score."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from generation.exports import course_of_job, render_course
from generation.exports.document import Course
from generation.models import CourseGenerationJob
from tests.browser import chromium_or_skip, run_node, screenshot_path
from tests.courses import HOSTILE, finished_job, make_hostile

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(teacher: Any, base_class: Any) -> CourseGenerationJob:
    return finished_job(teacher, base_class, questions_per_lesson=4)


def _learner(course: Course) -> tuple[dict[str, str], dict[str, str]]:
    """The learner's answers (every third marked question wrong) and each one's result."""
    answers: dict[str, str] = {}
    results: dict[str, str] = {}
    for question in course.questions:
        key = question.correct_option
        if not question.auto_marked or key is None:
            answers[question.identifier] = "Change one thing at a time\nand write it down."
            results[question.identifier] = "neutral"
            continue
        wrong = sum(r != "neutral" for r in results.values()) % 3 == 2
        others = [o.identifier for o in question.options if o.identifier != key.identifier]
        answers[question.identifier] = others[0] if wrong else key.identifier
        results[question.identifier] = "wrong" if wrong else "correct"
    return answers, results


def _unpack(package: bytes, into: Path) -> Path:
    zipfile.ZipFile(io.BytesIO(package)).extractall(into)
    return into


def test_a_learner_completes_the_course_under_scorm_again_with_the_expected_score(
    job: CourseGenerationJob, tmp_path: Path
) -> None:
    binary = chromium_or_skip()
    course = course_of_job(job)
    answers, results = _learner(course)
    right = sum(r == "correct" for r in results.values())
    marked = sum(r != "neutral" for r in results.values())
    assert 0 < right < marked
    expected = round(100 * right / marked)
    folder = _unpack(render_course(course, "scorm"), tmp_path / "package")
    lesson_shot = screenshot_path("scorm-lesson.png")
    end_shot = screenshot_path("scorm-end.png")
    spec = {
        "chromium": binary,
        "package": str(folder),
        "answers": answers,
        "resumeAfter": 2,  # the start page and lesson 1.1, then the learner leaves
        "shots": {"lesson": str(lesson_shot), "end": str(end_shot)},
    }

    played = run_node("play_scorm.mjs", spec)

    assert played["consoleErrors"] == [] and played["pageErrors"] == []
    assert played["errors"] == []  # every LMSSetValue accepted, error code 0
    first = played["firstSession"]
    assert first["lesson_status"] == "incomplete" and first["lesson_location"] == "2"
    first_lesson = [q.identifier for q in course.lessons[0].questions]
    assert played["resumed"] == {
        "progress": f"Lesson 1.2 · page 3 of {len(course.lessons) + 2}",
        "restored": len(first_lesson),  # answers kept in cmi.suspend_data
    }
    core = played["cmi"]["core"]
    assert core["lesson_status"] == "completed"
    assert core["score"] == {"raw": str(expected), "min": "0", "max": "100"}
    assert core["exit"] == "" and core["session_time"].count(":") == 2
    recorded = played["cmi"]["interactions"].values()  # this session's: lesson 1.2 onwards
    assert {i["id"]: i["result"] for i in recorded} == {
        identifier: result
        for identifier, result in results.items()
        if identifier not in first_lesson
    }
    assert played["endText"] == (
        f"You answered {right} of {marked} marked questions correctly ({expected}%)."
    )
    assert lesson_shot.stat().st_size > 10_000 and end_shot.stat().st_size > 5_000


def test_the_manifest_is_scorm_1_2_with_one_sco_whose_files_are_all_there(
    job: CourseGenerationJob,
) -> None:
    package = zipfile.ZipFile(io.BytesIO(render_course(course_of_job(job), "scorm")))
    manifest = etree.fromstring(package.read("imsmanifest.xml"))
    ns = {"cp": "http://www.imsproject.org/xsd/imscp_rootv1p1p2"}
    adlcp = "{http://www.adlnet.org/xsd/adlcp_rootv1p2}scormtype"

    assert manifest.findtext("cp:metadata/cp:schemaversion", namespaces=ns) == "1.2"
    organisation = manifest.find("cp:organizations/cp:organization", ns)
    assert organisation is not None
    assert organisation.findtext("cp:title", namespaces=ns) == course_of_job(job).title
    item = organisation.find("cp:item", ns)
    assert item is not None
    resources = manifest.findall("cp:resources/cp:resource", ns)
    assert [(r.get("identifier"), r.get(adlcp)) for r in resources] == [
        (item.get("identifierref"), "sco")
    ]
    listed = {f.get("href") for f in resources[0].findall("cp:file", ns)}
    assert resources[0].get("href") in listed
    assert listed == set(package.namelist()) - {"imsmanifest.xml"}


def test_the_package_works_without_an_lms_and_keeps_a_hostile_course_inert(
    job: CourseGenerationJob, tmp_path: Path
) -> None:
    binary = chromium_or_skip()
    make_hostile(job)
    folder = _unpack(render_course(course_of_job(job), "scorm"), tmp_path / "package")
    spec = {"chromium": binary, "pages": [{"url": (folder / "index.html").as_uri()}]}

    page = run_node("probe_pages.mjs", spec)["pages"][0]

    assert page["consoleErrors"] == [] and page["pageErrors"] == [] and page["dialogs"] == []
    assert page["scripts"] == 1 and page["handlers"] == [] and page["jsLinks"] == []  # course.js
    assert "No learning platform found" in page["text"]
    assert " ".join(HOSTILE["title"].split()) in " ".join(page["text"].split())
