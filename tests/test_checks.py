"""Content checks beyond the schema, and how their errors map to parts for targeted repair."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from generation import checks, parts
from generation.prompts import task_context
from generation.providers.offline import build_content
from generation.schemas import (
    Assessment,
    CourseOutline,
    CourseRequest,
    LessonSectionContent,
    Level,
    ModuleSummary,
    Question,
    TaskKind,
)
from generation.validation import FieldError, validate_output

REQUEST = CourseRequest(topic="Rivers and valleys", num_modules=2, lessons_per_module=2)


def _context(kind: TaskKind, key: str, request: CourseRequest = REQUEST) -> dict[str, Any]:
    outline = CourseOutline.model_validate(
        build_content(TaskKind.OUTLINE, request.model_dump(mode="json"))
    )
    return task_context(kind, key, request=request, outline=outline)


def _errors(kind: TaskKind, data: Any, key: str = "m1.l1", **overrides: Any) -> list[FieldError]:
    request = REQUEST.model_copy(update=overrides)
    context = _context(kind, key, request)
    return list(validate_output(kind, data, request=request, context=context).errors)


def _assessment(key: str = "m1.l1") -> dict[str, Any]:
    return build_content(TaskKind.ASSESSMENT, _context(TaskKind.ASSESSMENT, key))


def _multiple_choice_index(data: dict[str, Any]) -> int:
    return next(i for i, q in enumerate(data["questions"]) if q["type"] == "multiple_choice")


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize(
    "kind", [TaskKind.LESSON_SECTION, TaskKind.ASSESSMENT, TaskKind.MIND_MAP, TaskKind.OUTLINE]
)
def test_it_passes_the_offline_simulators_content(kind: TaskKind, level: Level) -> None:
    request = REQUEST.model_copy(update={"level": level})
    context = _context(kind, "m2.l2", request)

    outcome = validate_output(kind, build_content(kind, context), request=request, context=context)

    assert outcome.errors == ()


@pytest.mark.parametrize("catch_all", ["All of the above", "none of the above", "Both A and B"])
def test_it_rejects_catch_all_options(catch_all: str) -> None:
    data = _assessment()
    index = _multiple_choice_index(data)
    question = data["questions"][index]
    distractor = next(o for o in question["options"] if o != question["correct_answer"])
    j = question["options"].index(distractor)
    question["options"][j] = catch_all

    errors = _errors(TaskKind.ASSESSMENT, data)

    assert {e.path for e in errors} == {f"questions.{index}.options.{j}"}  # and it is short
    assert f'"{catch_all}" is a catch-all option' in errors[0].message


def test_it_rejects_a_distractor_much_shorter_than_the_answer() -> None:
    data = _assessment()
    index = _multiple_choice_index(data)
    question = data["questions"][index]
    j = next(j for j, o in enumerate(question["options"]) if o != question["correct_answer"])
    question["options"][j] = "Never"

    errors = _errors(TaskKind.ASSESSMENT, data)

    assert [e.path for e in errors] == [f"questions.{index}.options.{j}"]
    assert "has 5 characters" in errors[0].message
    assert "comparable length" in errors[0].message


def test_it_accepts_short_options_that_differ_by_a_few_characters() -> None:
    question = Question.model_validate(
        {
            "type": "multiple_choice",
            "stem": "How many rivers feed the lake?",
            "options": ["1", "12", "100", "7"],
            "correct_answer": "12",
            "explanation": "Twelve rivers flow into the lake from the hills.",
            "difficulty": "easy",
            "bloom_level": "remember",
            "objective": "Describe the lake",
        }
    )

    assert checks._distractor_lengths(0, question) == []


def test_it_rejects_a_near_duplicate_question_within_an_assessment() -> None:
    data = _assessment()
    data["questions"][3]["stem"] = data["questions"][1]["stem"].replace("?", " ?").upper()

    errors = _errors(TaskKind.ASSESSMENT, data)

    assert [e.path for e in errors] == ["questions.3.stem"]
    assert "near-duplicate of question 1" in errors[0].message


def test_it_reports_the_later_of_two_duplicate_questions_across_a_course() -> None:
    first, second, third = _assessment("m1.l1"), _assessment("m1.l2"), _assessment("m2.l1")
    second["questions"][2]["stem"] = "Rivers and valleys: " + first["questions"][0]["stem"]

    found = checks.course_duplicates(
        [("m1.l1", first), ("m1.l2", second), ("m2.l1", third)], topic=REQUEST.topic
    )

    assert [(d.key, d.index, d.earlier_key) for d in found] == [("m1.l2", 2, "m1.l1")]
    assert found[0].error().path == "questions.2.stem"
    assert "lesson m1.l1" in found[0].error().message


def test_it_finds_no_duplicates_between_the_simulators_lessons() -> None:
    keys = [f"m{m}.l{n}" for m in (1, 2) for n in (1, 2)]

    assert checks.course_duplicates([(k, _assessment(k)) for k in keys], topic=REQUEST.topic) == []


def test_it_names_the_learning_objective_a_section_leaves_out() -> None:
    context = _context(TaskKind.LESSON_SECTION, "m1.l1")
    data = build_content(TaskKind.LESSON_SECTION, context)
    objective = "Compare sediment transport in braided and meandering channels"
    context["learning_objectives"] = [*context["learning_objectives"], objective]

    errors = validate_output(TaskKind.LESSON_SECTION, data, request=REQUEST, context=context).errors

    assert [e.path for e in errors] == ["detailed_explanation"]
    assert f'does not cover the learning objective "{objective}"' in errors[0].message
    assert "sediment, transport, braided, meandering, channels" in errors[0].message


def test_it_accepts_an_objective_covered_in_other_words_forms() -> None:
    text = "You will explain how a river erodes its valley and deposit mistakes will be explained."

    assert checks._missing_objectives(text, ["Explain how rivers erode valleys"]) == []


def test_it_reports_the_reading_grade_and_the_band_when_prose_is_too_hard() -> None:
    context = _context(TaskKind.LESSON_SECTION, "m1.l1")
    data = build_content(TaskKind.LESSON_SECTION, context)
    hard = (
        "Notwithstanding considerable methodological heterogeneity, contemporary "
        "geomorphological investigations consistently demonstrate that fluvial "
        "incision rates correlate systematically with tectonically-induced uplift, "
        "precipitation variability and lithological characteristics of underlying bedrock. "
    )
    data["detailed_explanation"] = hard * 4 + data["detailed_explanation"]

    errors = validate_output(TaskKind.LESSON_SECTION, data, request=REQUEST, context=context).errors

    assert [e.path for e in errors] == ["detailed_explanation"]
    message = errors[0].message
    assert message.startswith("reading level is grade ")
    assert "a beginner course for general learners needs grade 4-12" in message
    grade = float(message.removeprefix("reading level is grade ").split(" ")[0])
    assert grade > 12


def test_it_does_not_count_the_subjects_own_terms_against_the_reading_level() -> None:
    text = "Photosynthesis makes sugar. Chlorophyll traps light. Leaves need water."

    assert checks.prose_grade(text, terms=["Photosynthesis and chlorophyll"]) < checks.prose_grade(
        text
    )


def test_it_requires_one_mind_map_node_per_module() -> None:
    request = REQUEST.model_copy(update={"num_modules": 3})
    data = build_content(TaskKind.MIND_MAP, _context(TaskKind.MIND_MAP, "course", request))
    data["nodes"] = data["nodes"][:2]

    errors = _errors(TaskKind.MIND_MAP, data, key="course", num_modules=3)

    assert [(e.path, e.message) for e in errors] == [
        ("nodes", "has 2 nodes; it needs one per module (3)")
    ]


def test_it_counts_modules_and_lessons_of_the_outline() -> None:
    data = build_content(TaskKind.OUTLINE, REQUEST.model_dump(mode="json"))
    data["modules"][1]["lessons"].pop()

    errors = _errors(TaskKind.OUTLINE, data, key="course")

    assert [(e.path, e.message) for e in errors] == [
        ("modules.1.lessons", "has 1 lessons; 2 requested")
    ]


# --- Parts -------------------------------------------------------------------------------------
def test_it_maps_errors_to_the_parts_that_hold_them() -> None:
    data = _assessment()
    errors = [FieldError("questions.2.options.1", "x"), FieldError("questions.2", "y")]

    assert parts.failing_parts(Assessment, data, errors) == ["questions.2"]
    assert parts.failing_parts(
        LessonSectionContent,
        {"introduction": "", "detailed_explanation": "", "key_concepts": [{}], "examples": [{}]},
        [FieldError("introduction", "too short")],
    ) == ["introduction"]


@pytest.mark.parametrize(
    "paths",
    [
        [""],  # a model-wide rule
        ["questions"],  # the list as a whole (its count)
        ["questions.0.stem", "questions.1.stem", "questions.2.stem"],  # most of the object
        ["questions.9"],  # a question that is not there
    ],
)
def test_it_asks_for_the_whole_object_when_parts_cannot_fix_it(paths: list[str]) -> None:
    errors = [FieldError(p, "problem") for p in paths]

    assert parts.failing_parts(Assessment, _assessment(), errors) is None


def test_it_builds_a_schema_and_merges_for_one_part() -> None:
    data = {"summary": "S" * 60, "key_takeaways": ["a", "b"]}
    schema = parts.part_schema(ModuleSummary, "key_takeaways")

    assert list(schema.model_json_schema()["properties"]) == ["key_takeaways"]
    assert parts.extract(data, "key_takeaways") == {"key_takeaways": ["a", "b"]}
    merged = parts.merge(data, "key_takeaways", {"key_takeaways": ["c", "d"]})
    assert merged == {"summary": "S" * 60, "key_takeaways": ["c", "d"]}
    assert data["key_takeaways"] == ["a", "b"]  # the original is untouched
    assessment = _assessment()
    assert parts.part_schema(Assessment, "questions.1") is Question
    replaced = parts.merge(assessment, "questions.1", copy.deepcopy(assessment["questions"][0]))
    assert replaced["questions"][1] == assessment["questions"][0]


def test_course_duplicates_matches_the_first_earlier_stem_like_the_pairwise_check() -> None:
    """The vectorised comparison reports what comparing stem by stem would: the first earlier
    kept stem that is a near-duplicate, for every later question."""
    stems = [
        "What carves a valley?",
        "Which force carves a river valley?",
        "What carves a valley ?",
        "Where does a river begin?",
        "Which force carves the river valley?",
        "Where does the river begin?",
        "What is a delta?",
    ]
    outputs = [(f"m1.l{i}", {"questions": [{"stem": s}]}) for i, s in enumerate(stems)]

    expected: list[tuple[str, int, str]] = []
    kept: list[tuple[str, str]] = []
    for key, output in outputs:
        stem = output["questions"][0]["stem"]
        match = next((k for k in kept if checks.is_near_duplicate(stem, k[1], topic="")), None)
        if match:
            expected.append((key, 0, match[0]))
        else:
            kept.append((key, stem))
    found = checks.course_duplicates(outputs, topic="")

    assert [(d.key, d.index, d.earlier_key) for d in found] == expected
    assert expected  # the set has duplicates to find


@pytest.mark.parametrize(
    ("a", "b", "topic"),
    [
        # Words of any script count: these used to reduce to "" and compare as identical.
        ("光合成とは何ですか", "火山はどのようにできますか", ""),
        ("Qu'est-ce que la photosynthèse ?", "Où se forment les volcans ?", ""),
        # Stems of the topic's words alone are compared whole, not as two empty keys.
        ("Photosynthesis?", "Volcanoes?", "Photosynthesis and volcanoes"),
    ],
)
def test_it_does_not_take_different_questions_for_duplicates_in_any_script(
    a: str, b: str, topic: str
) -> None:
    assert not checks.is_near_duplicate(a, b, topic=topic)
    assert checks.is_near_duplicate(a, a, topic=topic)
