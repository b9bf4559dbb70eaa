"""The QTI 2.1 package read back by two independent consumers:

* pyslet (PyPI), a QTI 2.1 implementation: it opens the content package, parses every item and
  test, and runs each item's response processing, as a delivery engine would;
* citolab-qti-convert (PyPI), which upgrades the package to QTI 3.0 as a platform importing it
  would; its output is read with lxml.

Every item's correct response must equal the course's answer key, taken here from the course
JSON directly (not from the exporter's own model).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pyslet.imscpv1p2 as content_package
import pyslet.qtiv2.xml as qti_xml
import pytest
from lxml import etree
from pyslet.qtiv2 import variables
from pyslet.qtiv2.interactions import SimpleChoice
from pyslet.qtiv2.tests import AssessmentItemRef
from qti_convert import upgrade_package

from generation.exports import course_of_job, render_course
from generation.models import CourseGenerationJob
from generation.regeneration import task_regenerate
from generation.schemas import TaskKind
from tests.courses import HOSTILE, finished_job, make_hostile

pytestmark = pytest.mark.django_db(transaction=True)

QTI3 = "{http://www.imsglobal.org/xsd/imsqtiasi_v3p0}"


def answer_key(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Item identifier -> (kind, expected correct response), straight from the course JSON."""
    key: dict[str, tuple[str, str]] = {}
    for m, module in enumerate(document["modules"], start=1):
        for n, lesson in enumerate(module["lessons"], start=1):
            for q, question in enumerate(lesson["assessment"]["questions"], start=1):
                options = [" ".join(o.lower().split()) for o in question["options"]]
                answer = " ".join(question["correct_answer"].lower().split())
                if question["type"] == "short_answer":
                    key[f"m{m}-l{n}-q{q}"] = ("text", question["correct_answer"])
                else:
                    key[f"m{m}-l{n}-q{q}"] = ("choice", "ABCDEF"[options.index(answer)])
    return key


def _unzip(package: bytes, into: Path) -> Path:
    zipfile.ZipFile(io.BytesIO(package)).extractall(into)
    return into


def _items(folder: Path) -> dict[str, Any]:
    """pyslet's reading: item identifier -> parsed assessmentItem, through the manifest."""
    package = content_package.ContentPackage(str(folder))
    items = {}
    for resource in package.manifest.root.Resources.Resource:
        if resource.type != "imsqti_item_xmlv2p1":
            continue
        document = qti_xml.QTIDocument(
            baseURI=str(resource.File[0].resolve_uri(resource.File[0].href))
        )
        document.read()
        items[document.root.identifier] = document.root
    return items


def _respond(item: Any, response: str) -> tuple[float | None, str | None]:
    """Run the item's response processing on `response`; return (SCORE, FEEDBACK)."""
    state = variables.ItemSessionState(item)
    state.begin_session()
    # begin_attempt() without its HTML preview, which pyslet lacks for extendedTextInteraction.
    state["numAttempts"].set_value(1)
    state["RESPONSE"] = variables.Value.copy_value(state["RESPONSE.DEFAULT"])
    state["RESPONSE"].set_value(response)
    state.end_attempt()
    return state["SCORE"].value, state["FEEDBACK"].value


@pytest.fixture
def job(teacher: Any, base_class: Any) -> CourseGenerationJob:
    return finished_job(teacher, base_class, questions_per_lesson=4)


def test_pyslet_reads_every_item_with_the_answer_key_and_scores_it(
    job: CourseGenerationJob, tmp_path: Path
) -> None:
    assert job.course is not None
    key = answer_key(job.course)
    assert {kind for kind, _ in key.values()} == {"choice", "text"}

    items = _items(_unzip(render_course(course_of_job(job), "qti"), tmp_path))

    assert sorted(items) == sorted(key)
    for identifier, item in items.items():
        kind, expected = key[identifier]
        declaration = item.ResponseDeclaration[0]
        assert declaration.get_correct_value().value == expected, identifier
        if kind == "choice":
            choices = [c.identifier for c in item.ItemBody.find_children_depth_first(SimpleChoice)]
            assert expected in choices
            assert _respond(item, expected) == (1.0, "correct")
            for wrong in set(choices) - {expected}:
                assert _respond(item, wrong) == (0.0, "incorrect")
        else:
            assert _respond(item, "My own answer.") == (0.0, "model_answer")  # marked by a person


def test_every_lesson_is_one_test_of_its_items_in_order(
    job: CourseGenerationJob, tmp_path: Path
) -> None:
    folder = _unzip(render_course(course_of_job(job), "qti"), tmp_path)
    package = content_package.ContentPackage(str(folder))
    tests = [r for r in package.manifest.root.Resources.Resource if r.type == "imsqti_test_xmlv2p1"]
    course = course_of_job(job)
    assert [r.href for r in tests] == [f"tests/{lesson.anchor}.xml" for lesson in course.lessons]
    for resource, lesson in zip(tests, course.lessons, strict=True):
        document = qti_xml.QTIDocument(
            baseURI=str(resource.File[0].resolve_uri(resource.File[0].href))
        )
        document.read()
        refs = [
            ref.identifier for ref in document.root.find_children_depth_first(AssessmentItemRef)
        ]
        assert refs == [q.identifier for q in lesson.questions]
        assert [d.identifierref for d in resource.Dependency] == [f"item-{r}" for r in refs]


def test_citolab_upgrades_the_package_to_qti3_with_the_same_answer_key(
    job: CourseGenerationJob,
) -> None:
    assert job.course is not None
    key = answer_key(job.course)

    upgraded = upgrade_package(render_course(course_of_job(job), "qti")).files

    found = {}
    for name, content in upgraded.items():
        if not name.startswith("items/"):
            continue
        root = etree.fromstring(content.encode() if isinstance(content, str) else content)
        assert root.tag == f"{QTI3}qti-assessment-item"
        value = root.find(
            f"{QTI3}qti-response-declaration/{QTI3}qti-correct-response/{QTI3}qti-value"
        )
        assert value is not None
        found[root.get("identifier")] = value.text
    assert found == {identifier: expected for identifier, (_, expected) in key.items()}
    manifest = etree.fromstring(str(upgraded["imsmanifest.xml"]).encode())
    types = {r.get("type") for r in manifest.iter("{*}resource")}
    assert types == {"imsqti_item_xmlv3p0", "imsqti_test_xmlv3p0"}


def test_a_hostile_course_stays_text_in_the_items(job: CourseGenerationJob, tmp_path: Path) -> None:
    make_hostile(job)
    package = render_course(course_of_job(job), "qti")

    assert len(_items(_unzip(package, tmp_path))) == len(answer_key(job.course or {}))
    tree = etree.fromstring(zipfile.ZipFile(io.BytesIO(package)).read("items/m1-l1-q1.xml"))
    assert tree.findtext(".//{*}prompt") == HOSTILE["title"]  # the text, exactly, as text
    assert tree.findtext(".//{*}simpleChoice") == HOSTILE["option"]
    assert tree.find(".//{*}script") is None and tree.find(".//{*}b") is None


def test_the_package_follows_a_regenerated_assessment(
    job: CourseGenerationJob, teacher: Any
) -> None:
    task = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l1")
    before = [q["stem"] for q in (task.output or {})["questions"]]

    task_regenerate(task_id=task.pk, by=teacher)

    job.refresh_from_db()
    task.refresh_from_db()
    after = [q["stem"] for q in (task.output or {})["questions"]]
    assert after != before
    assert job.course is not None
    package = zipfile.ZipFile(io.BytesIO(render_course(course_of_job(job), "qti")))
    for number, stem in enumerate(after, start=1):
        tree = etree.fromstring(package.read(f"items/m1-l1-q{number}.xml"))
        assert tree.findtext(".//{*}prompt") == stem
    key = answer_key(job.course)
    for identifier, (_, expected) in key.items():
        tree = etree.fromstring(package.read(f"items/{identifier}.xml"))
        assert tree.findtext(".//{*}correctResponse/{*}value") == expected
