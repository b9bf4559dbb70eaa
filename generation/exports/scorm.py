"""The course as a SCORM 1.2 package: one SCO that an LMS launches, tracks and scores.

    imsmanifest.xml   SCORM 1.2 (IMS CP 1.1.2 + ADL CP) manifest: one organisation, one item,
                      one SCO resource
    index.html        the course, one page per lesson (course page styles, mind map as SVG),
                      each lesson's quiz as a form
    course.js         finds the LMS API and reports status, score, location and interactions
                      (generation/exports/assets/scorm-course.js says what, and when)

The quizzes are marked in the browser, so the answer key is in the page, as in any SCORM quiz
that runs without a server.
"""

from __future__ import annotations

from pathlib import Path

from django.template.loader import render_to_string
from lxml import etree

from generation.exports.archive import zip_files
from generation.exports.document import Course
from generation.exports.html import course_context
from generation.exports.text import xml_text

CP = "http://www.imsproject.org/xsd/imscp_rootv1p1p2"
ADLCP = "http://www.adlnet.org/xsd/adlcp_rootv1p2"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = (
    f"{CP} imscp_rootv1p1p2.xsd http://www.imsglobal.org/xsd/imsmd_rootv1p2p1 "
    f"imsmd_rootv1p2p1.xsd {ADLCP} adlcp_rootv1p2.xsd"
)
RUNTIME = Path(__file__).with_name("assets") / "scorm-course.js"


def _sub(parent: etree._Element, tag: str, text: str = "", **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, f"{{{CP}}}{tag}", attrs)
    if text:
        element.text = xml_text(text)
    return element


def manifest(course: Course) -> bytes:
    root = etree.Element(
        f"{{{CP}}}manifest",
        {"identifier": f"coursegen-{course.job_id or 'course'}", "version": "1.0"},
        nsmap={None: CP, "adlcp": ADLCP, "xsi": XSI},
    )
    root.set(f"{{{XSI}}}schemaLocation", SCHEMA_LOCATION)
    metadata = _sub(root, "metadata")
    _sub(metadata, "schema", "ADL SCORM")
    _sub(metadata, "schemaversion", "1.2")
    organisation = _sub(
        _sub(root, "organizations", default="course"), "organization", identifier="course"
    )
    _sub(organisation, "title", course.title)
    item = _sub(
        organisation, "item", identifier="course-item", identifierref="sco", isvisible="true"
    )
    _sub(item, "title", course.title)
    resource = _sub(
        _sub(root, "resources"), "resource", identifier="sco", type="webcontent", href="index.html"
    )
    resource.set(f"{{{ADLCP}}}scormtype", "sco")
    for name in ("index.html", "course.js"):
        _sub(resource, "file", href=name)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def course_page(course: Course) -> bytes:
    context = course_context(course, quiz_template="courses/scorm/_quiz.html")
    return render_to_string("courses/scorm/index.html", context).encode("utf-8")


def render(course: Course) -> bytes:
    return zip_files(
        [
            ("imsmanifest.xml", manifest(course)),
            ("index.html", course_page(course)),
            ("course.js", RUNTIME.read_bytes()),
        ]
    )
