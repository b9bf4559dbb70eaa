"""The course's questions as an IMS QTI 2.1 content package (a zip any QTI 2.1 tool imports).

    imsmanifest.xml               IMS CP 1.1 manifest: one resource per item and per test
    items/<m1-l2-q3>.xml          one assessmentItem per question
    tests/<m1-l2>.xml             one assessmentTest per lesson, referencing its items

Multiple choice and true/false questions are choiceInteractions whose correctResponse is the
answer key's option; their response processing is the match_correct rule written out (not the
template URL, which offline tools cannot resolve): SCORE 1 for the key, else 0, and a FEEDBACK
outcome that shows the explanation as modalFeedback. Short answers are extendedTextInteractions
whose correctResponse is the model answer; a person marks them (no SCORE rule), and answering
shows the model answer and the explanation. Model text goes into XML as escaped text only.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree as ET

from generation.exports.archive import zip_files
from generation.exports.document import Course, Lesson, Question
from generation.exports.text import xml_text

QTI = "http://www.imsglobal.org/xsd/imsqti_v2p1"
QTI_XSD = "http://www.imsglobal.org/xsd/qti/qtiv2p1/imsqti_v2p1.xsd"
CP = "http://www.imsglobal.org/xsd/imscp_v1p1"
CP_XSD = "http://www.imsglobal.org/xsd/qti/qtiv2p1/qtiv2p1_imscpv1p2_v1p0.xsd"
QTI_MD = "http://www.imsglobal.org/xsd/imsqti_metadata_v2p1"
QTI_MD_XSD = "http://www.imsglobal.org/xsd/qti/qtiv2p1/imsqti_metadata_v2p1.xsd"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

NSMAP = {QTI: {None: QTI, "xsi": XSI}, CP: {None: CP, "imsqti": QTI_MD, "xsi": XSI}}


def _el(
    ns: str, tag: str, parent: ET._Element | None = None, text: str = "", **attrs: str
) -> ET._Element:
    name = f"{{{ns}}}{tag}"
    if parent is None:
        element = ET.Element(name, attrs, nsmap=NSMAP[ns])
    else:
        element = ET.SubElement(parent, name, attrs)
    if text:
        element.text = xml_text(text)
    return element


def _q(tag: str, parent: ET._Element | None = None, text: str = "", **attrs: str) -> ET._Element:
    return _el(QTI, tag, parent, text, **attrs)


def _paragraphs(parent: ET._Element, text: str) -> None:
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if paragraph:
            _q("p", parent, paragraph)


def _set_outcome(parent: ET._Element, identifier: str, base_type: str, value: str) -> None:
    setter = _q("setOutcomeValue", parent, identifier=identifier)
    _q("baseValue", setter, value, baseType=base_type)


def _feedback(item: ET._Element, identifier: str, lead: str, question: Question) -> None:
    feedback = _q(
        "modalFeedback", item, outcomeIdentifier="FEEDBACK", identifier=identifier, showHide="show"
    )
    _q("p", feedback, lead)
    _paragraphs(feedback, question.explanation)


def _choice_item(item: ET._Element, question: Question) -> None:
    key = question.correct_option
    assert key is not None  # only auto-marked questions come here
    declaration = _q(
        "responseDeclaration",
        item,
        identifier="RESPONSE",
        cardinality="single",
        baseType="identifier",
    )
    _q("value", _q("correctResponse", declaration), key.identifier)
    _outcomes(item)
    body = _q("itemBody", item)
    interaction = _q(
        "choiceInteraction", body, responseIdentifier="RESPONSE", shuffle="false", maxChoices="1"
    )
    _q("prompt", interaction, question.stem)
    for option in question.options:
        _q("simpleChoice", interaction, option.text, identifier=option.identifier)
    condition = _q("responseCondition", _q("responseProcessing", item))
    when = _q("responseIf", condition)
    match = _q("match", when)
    _q("variable", match, identifier="RESPONSE")
    _q("correct", match, identifier="RESPONSE")
    _set_outcome(when, "SCORE", "float", "1")
    _set_outcome(when, "FEEDBACK", "identifier", "correct")
    otherwise = _q("responseElse", condition)
    _set_outcome(otherwise, "SCORE", "float", "0")
    _set_outcome(otherwise, "FEEDBACK", "identifier", "incorrect")
    _feedback(item, "correct", f"Correct: {key.identifier}. {key.text}", question)
    _feedback(item, "incorrect", f"Not quite. The answer is {key.identifier}. {key.text}", question)


def _text_item(item: ET._Element, question: Question) -> None:
    declaration = _q(
        "responseDeclaration", item, identifier="RESPONSE", cardinality="single", baseType="string"
    )
    _q("value", _q("correctResponse", declaration), question.correct_answer)
    _outcomes(item)
    body = _q("itemBody", item)
    interaction = _q("extendedTextInteraction", body, responseIdentifier="RESPONSE")
    _q("prompt", interaction, question.stem)
    # Marked by a person: answering only reveals the model answer and the explanation.
    condition = _q("responseCondition", _q("responseProcessing", item))
    when = _q("responseIf", condition)
    _q("variable", _q("isNull", _q("not", when)), identifier="RESPONSE")
    _set_outcome(when, "FEEDBACK", "identifier", "model_answer")
    _feedback(item, "model_answer", f"Model answer: {question.correct_answer}", question)


def _outcomes(item: ET._Element) -> None:
    score = _q(
        "outcomeDeclaration", item, identifier="SCORE", cardinality="single", baseType="float"
    )
    _q("value", _q("defaultValue", score), "0")
    _q(
        "outcomeDeclaration",
        item,
        identifier="FEEDBACK",
        cardinality="single",
        baseType="identifier",
    )


def assessment_item(question: Question, *, lesson: Lesson) -> ET._Element:
    item = _q(
        "assessmentItem",
        identifier=question.identifier,
        title=xml_text(f"{lesson.number} {lesson.title}: question {question.number}"),
        adaptive="false",
        timeDependent="false",
    )
    item.set(f"{{{XSI}}}schemaLocation", f"{QTI} {QTI_XSD}")
    (_choice_item if question.auto_marked else _text_item)(item, question)
    return item


def assessment_test(lesson: Lesson) -> ET._Element:
    test = _q(
        "assessmentTest",
        identifier=f"test-{lesson.anchor}",
        title=xml_text(f"Lesson {lesson.number}: {lesson.title}"),
    )
    test.set(f"{{{XSI}}}schemaLocation", f"{QTI} {QTI_XSD}")
    _q("outcomeDeclaration", test, identifier="SCORE", cardinality="single", baseType="float")
    part = _q(
        "testPart",
        test,
        identifier="part-1",
        navigationMode="nonlinear",
        submissionMode="individual",
    )
    section = _q(
        "assessmentSection",
        part,
        identifier=f"section-{lesson.anchor}",
        title=xml_text(lesson.title) or "Questions",
        visible="true",
    )
    for question in lesson.questions:
        _q(
            "assessmentItemRef",
            section,
            identifier=question.identifier,
            href=f"../items/{question.identifier}.xml",
        )
    total = _q("setOutcomeValue", _q("outcomeProcessing", test), identifier="SCORE")
    _q("testVariables", _q("sum", total), variableIdentifier="SCORE")
    return test


def _interaction(question: Question) -> str:
    return "choiceInteraction" if question.auto_marked else "extendedTextInteraction"


def manifest(course: Course) -> ET._Element:
    root = _el(CP, "manifest", identifier=f"MANIFEST-{course.job_id or 'course'}")
    root.set(f"{{{XSI}}}schemaLocation", f"{CP} {CP_XSD} {QTI_MD} {QTI_MD_XSD}")
    metadata = _el(CP, "metadata", root)
    _el(CP, "schema", metadata, "QTIv2.1 Package")
    _el(CP, "schemaversion", metadata, "1.0.0")
    _el(CP, "organizations", root)
    resources = _el(CP, "resources", root)
    for lesson in course.lessons:
        if not lesson.questions:
            continue
        href = f"tests/{lesson.anchor}.xml"
        test = _el(
            CP,
            "resource",
            resources,
            identifier=f"test-{lesson.anchor}",
            type="imsqti_test_xmlv2p1",
            href=href,
        )
        _el(CP, "file", test, href=href)
        for question in lesson.questions:
            _el(CP, "dependency", test, identifierref=f"item-{question.identifier}")
    for question in course.questions:
        href = f"items/{question.identifier}.xml"
        item = _el(
            CP,
            "resource",
            resources,
            identifier=f"item-{question.identifier}",
            type="imsqti_item_xmlv2p1",
            href=href,
        )
        qti_metadata = _el(QTI_MD, "qtiMetadata", _el(CP, "metadata", item))
        _el(QTI_MD, "timeDependent", qti_metadata, "false")
        _el(QTI_MD, "interactionType", qti_metadata, _interaction(question))
        _el(QTI_MD, "feedbackType", qti_metadata, "nonadaptive")
        _el(QTI_MD, "solutionAvailable", qti_metadata, "true")
        _el(QTI_MD, "toolName", qti_metadata, "coursegen")
        _el(CP, "file", item, href=href)
    return root


def _xml(element: ET._Element) -> bytes:
    return ET.tostring(element, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def package_files(course: Course) -> Iterable[tuple[str, bytes]]:
    yield "imsmanifest.xml", _xml(manifest(course))
    for lesson in course.lessons:
        for question in lesson.questions:
            yield f"items/{question.identifier}.xml", _xml(assessment_item(question, lesson=lesson))
        if lesson.questions:
            yield f"tests/{lesson.anchor}.xml", _xml(assessment_test(lesson))


def render(course: Course) -> bytes:
    return zip_files(package_files(course))
