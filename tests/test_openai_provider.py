"""OpenAIProvider against a real HTTP server through the real `openai` client (no mocks)."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from generation.provider_models import ProviderConstraint
from generation.providers.base import (
    CompletionRequest,
    InvalidOutputError,
    Message,
    PermanentProviderError,
    TransientProviderError,
)
from generation.providers.constraints import DatabaseConstraints
from generation.providers.openai import OpenAIProvider, grammar_schema, strict_schema
from generation.schemas import (
    OUTPUT_SCHEMAS,
    ConstraintStep,
    CourseOutline,
    MindMap,
    TaskKind,
    Tier,
)
from tests.openai_server import (
    FakeOpenAIServer,
    Mode,
    chat_completion_body,
    running_openai_server,
)

API_KEY = "sk-test-secret-key-123"
OUTLINE = {
    "title": "Intro to Tea",
    "description": "All about tea.",
    "modules": [
        {
            "title": "Leaves",
            "description": "Where tea comes from.",
            "lessons": [
                {"title": "Plants", "summary": "Camellia sinensis.", "learning_objectives": ["a"]}
            ],
        }
    ],
}
FORBIDDEN_KEYWORDS = {"minLength", "maxLength", "default", "title"}


# --- helpers ------------------------------------------------------------------------------------
def outline_request(**overrides: Any) -> CompletionRequest:
    fields: dict[str, Any] = {
        "messages": (
            Message("system", "You write course outlines."),
            Message("user", "Outline a course on tea."),
        ),
        "schema": CourseOutline,
        "model": "gpt-4.1-mini",
        "tier": Tier.COMPLEX,
        "task_kind": TaskKind.OUTLINE,
    }
    return CompletionRequest(**{**fields, **overrides})


def provider_for(server: FakeOpenAIServer, *, timeout_s: float = 5.0) -> OpenAIProvider:
    return OpenAIProvider(
        api_key=API_KEY, base_url=server.base_url, timeout_s=timeout_s, max_retries=0
    )


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with running_openai_server(mode="json_schema") as running:
        running.replies["CourseOutline"] = OUTLINE
        yield running


def error_body(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def schema_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema node under `node`, walking structure (property names are not keywords)."""
    yield node
    for key in ("properties", "$defs"):
        for sub in node.get(key, {}).values():
            yield from schema_nodes(sub)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key, []):
            yield from schema_nodes(sub)
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"])


def strict_problems(schema: dict[str, Any]) -> list[str]:
    """What OpenAI strict mode would reject (or silently ignore) in `schema`."""
    problems = []
    defs = schema.get("$defs", {})
    for node in schema_nodes(schema):
        problems += [f"keyword {k} in {node}" for k in FORBIDDEN_KEYWORDS & node.keys()]
        if "$ref" in node and (len(node) > 1 or node["$ref"].split("/")[-1] not in defs):
            problems.append(f"bad $ref node {node}")
        if node.get("type") == "object":
            if node.get("additionalProperties") is not False:
                problems.append(f"object allows extra keys: {node}")
            if node.get("required") != list(node.get("properties", {})):
                problems.append(f"object does not require all properties: {node}")
    return problems


# --- structured outputs -------------------------------------------------------------------------
def test_it_sends_a_strict_json_schema_built_from_the_pydantic_model(
    server: FakeOpenAIServer,
) -> None:
    provider_for(server).complete(outline_request())

    (sent,) = server.requests
    fmt = sent.body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "CourseOutline"
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema == strict_schema(CourseOutline)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["title", "description", "modules"]
    assert "minLength" not in json.dumps(schema)
    assert strict_problems(schema) == []
    assert sent.body["model"] == "gpt-4.1-mini"
    assert [m["role"] for m in sent.body["messages"]] == ["system", "user"]
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


def test_it_returns_parsed_data_usage_with_cached_tokens_and_rate_limit_headers(
    server: FakeOpenAIServer,
) -> None:
    server.cached_tokens = 64

    completion = provider_for(server).complete(outline_request())

    assert completion.data == OUTLINE
    assert json.loads(completion.raw_text) == OUTLINE
    assert completion.usage.input_tokens == 120
    assert completion.usage.cached_tokens == 64
    assert completion.usage.output_tokens == 40
    assert completion.provider == "openai"
    assert completion.model == "gpt-4.1-mini"
    assert completion.latency_s > 0
    assert completion.headers["x-ratelimit-remaining-requests"] == "499"
    assert set(completion.headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
    }


def test_it_counts_zero_cached_tokens_when_the_server_omits_the_details(
    server: FakeOpenAIServer,
) -> None:
    body = chat_completion_body(json.dumps(OUTLINE))
    del body["usage"]["prompt_tokens_details"]
    server.script(body=body)

    completion = provider_for(server).complete(outline_request())

    assert completion.usage.cached_tokens == 0
    assert completion.usage.input_tokens == 120


def test_it_sends_max_tokens_to_compatible_servers_when_a_limit_is_set(
    server: FakeOpenAIServer,
) -> None:
    provider_for(server).complete(outline_request(max_output_tokens=321))

    assert server.requests[0].body["max_tokens"] == 321


@pytest.mark.parametrize("kind", list(OUTPUT_SCHEMAS), ids=str)
def test_it_builds_a_strict_schema_for_every_output_schema(kind: TaskKind) -> None:
    schema = strict_schema(OUTPUT_SCHEMAS[kind])

    assert strict_problems(schema) == []
    assert schema["type"] == "object"


def test_it_makes_defaulted_fields_required_and_keeps_recursion() -> None:
    schema = strict_schema(MindMap)

    node = schema["$defs"]["MindMapNode"]
    assert node["required"] == ["label", "children"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/MindMapNode"}


def test_it_checker_catches_what_strict_mode_rejects() -> None:
    class Loose(BaseModel):
        name: str = "x"

    assert strict_problems(Loose.model_json_schema()) != []


# --- the constraint ladder ----------------------------------------------------------------------
def test_it_keeps_json_schema_on_a_server_that_accepts_it(server: FakeOpenAIServer) -> None:
    provider = provider_for(server)

    first = provider.complete(outline_request())
    provider.complete(outline_request())

    assert [r.constraint_step for r in server.requests] == ["json_schema", "json_schema"]
    assert first.constraint == "json_schema"
    assert provider.constraint_step("gpt-4.1-mini") is ConstraintStep.JSON_SCHEMA


def test_it_moves_to_json_object_with_the_schema_when_llamacpp_refuses_and_keeps_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_openai_server(mode="llamacpp") as server:
        server.default_reply = OUTLINE
        provider = provider_for(server)

        first = provider.complete(outline_request())
        second = provider_for(server).complete(outline_request())  # a fresh instance knows too

    assert first.data == OUTLINE and second.data == OUTLINE
    steps = [r.constraint_step for r in server.requests]
    assert steps == ["json_schema", "json_object_schema", "json_object_schema"]
    assert first.constraint == second.constraint == "json_object_schema"
    fmt = server.requests[1].body["response_format"]
    assert fmt == {"type": "json_object", "schema": grammar_schema(CourseOutline)}
    assert fmt["schema"]["required"] == ["title", "description", "modules"]
    assert "minLength" in json.dumps(fmt["schema"])  # the grammar enforces lengths too
    assert "title" not in fmt["schema"]["properties"]["modules"]
    system = server.requests[1].body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You write course outlines.")
    assert "Reply with one JSON object that matches this JSON schema: {" in system["content"]
    ladder_logs = [r for r in caplog.records if r.name == "coursegen.providers.openai"]
    assert len(ladder_logs) == 1
    assert "json_schema (500)" in ladder_logs[0].getMessage()


def test_it_moves_to_plain_json_object_when_both_stronger_steps_are_refused() -> None:
    with running_openai_server(mode="json_object_only") as server:
        server.default_reply = OUTLINE
        provider = provider_for(server)

        first = provider.complete(outline_request())
        second = provider.complete(outline_request())

    assert first.data == second.data == OUTLINE
    steps = [r.constraint_step for r in server.requests]
    assert steps == ["json_schema", "json_object_schema", "json_object", "json_object"]
    assert server.requests[-1].body["response_format"] == {"type": "json_object"}
    assert "JSON schema" in server.requests[-1].body["messages"][0]["content"]
    assert provider.constraint_step("gpt-4.1-mini") is ConstraintStep.JSON_OBJECT


def test_it_decides_per_model_on_the_same_server() -> None:
    with running_openai_server(mode="llamacpp") as server:
        server.default_reply = OUTLINE
        provider = provider_for(server)
        provider.complete(outline_request(model="local-a"))

        provider.complete(outline_request(model="local-b"))

    steps = [r.constraint_step for r in server.requests]
    assert steps == ["json_schema", "json_object_schema"] * 2


@pytest.mark.django_db
def test_it_stores_the_step_once_per_server_and_model_and_a_new_process_starts_there() -> None:
    with running_openai_server(mode="json_object_only") as server:
        server.default_reply = OUTLINE
        provider = OpenAIProvider(
            api_key=API_KEY,
            base_url=server.base_url,
            timeout_s=5,
            constraints=DatabaseConstraints(),
        )
        provider.complete(outline_request())
        provider.complete(outline_request())
        row = ProviderConstraint.objects.get()
        updated = row.updated_at
        # A fresh store stands for another worker process: it reads the table.
        fresh = OpenAIProvider(
            api_key=API_KEY,
            base_url=server.base_url,
            timeout_s=5,
            constraints=DatabaseConstraints(),
        )
        fresh.complete(outline_request())

    assert (row.base_url, row.model, row.step) == (server.base_url, "gpt-4.1-mini", "json_object")
    assert [r["step"] for r in row.refusals] == ["json_schema", "json_object_schema"]
    assert [r["status"] for r in row.refusals] == [400, 400]
    assert "not supported" in row.refusals[0]["message"]
    assert ProviderConstraint.objects.get().updated_at == updated  # stored once
    assert [r.constraint_step for r in server.requests][-1] == "json_object"
    assert len(server.requests) == 5


def test_it_moves_down_when_a_server_answers_400_about_response_format() -> None:
    with running_openai_server(mode="json_schema") as server:
        server.default_reply = OUTLINE
        server.script(status=400, body=error_body("response_format json_schema is unsupported"))

        completion = provider_for(server).complete(outline_request())

    assert completion.data == OUTLINE
    assert [r.constraint_step for r in server.requests] == ["json_schema", "json_object_schema"]


def test_it_fails_at_the_last_step_when_plain_json_object_is_refused_too() -> None:
    with running_openai_server(mode="json_object_only") as server:
        for _ in range(3):
            server.script(status=400, body=error_body("response_format json_object is unsupported"))

        with pytest.raises(PermanentProviderError, match="json_object is unsupported"):
            provider_for(server).complete(outline_request())

    assert len(server.requests) == 3
    assert provider_for(server).constraint_step("gpt-4.1-mini") is None


def test_it_does_not_move_down_on_a_400_that_is_not_about_the_format(
    server: FakeOpenAIServer,
) -> None:
    server.script(status=400, body=error_body("This model's maximum context length is 8192 tokens"))

    with pytest.raises(PermanentProviderError):
        provider_for(server).complete(outline_request())

    assert len(server.requests) == 1


def test_it_adds_a_system_message_for_the_schema_when_there_is_none() -> None:
    with running_openai_server(mode="llamacpp") as server:
        request = outline_request(messages=(Message("user", "Outline tea."),))
        provider_for(server).complete(request)

    messages = server.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "JSON schema" in messages[0]["content"]


def test_it_does_not_fall_back_when_openai_rejects_our_schema(server: FakeOpenAIServer) -> None:
    message = "Invalid schema for response_format 'CourseOutline': 'required' is required"
    server.script(status=400, body=error_body(message))

    with pytest.raises(PermanentProviderError) as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.status_code == 400
    assert "Invalid schema" in str(caught.value)
    assert len(server.requests) == 1
    assert provider_for(server).constraint_step("gpt-4.1-mini") is None


# --- error classification -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "HTTP-DATE+30"}, 30.0),
    ],
    ids=["seconds", "milliseconds", "http-date"],
)
def test_it_turns_429_into_transient_with_retry_after(
    server: FakeOpenAIServer, headers: dict[str, str], expected: float
) -> None:
    if headers.get("retry-after") == "HTTP-DATE+30":  # built now, not at collection time
        headers = {"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)}
    server.script(status=429, headers=headers, body=error_body("Rate limit reached", "tokens"))

    with pytest.raises(TransientProviderError) as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.status_code == 429
    assert caught.value.retry_after == pytest.approx(expected, abs=2.0)
    assert "Rate limit reached" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_it_turns_5xx_into_transient(server: FakeOpenAIServer, status: int) -> None:
    server.script(status=status, body=error_body("The server is overloaded", "server_error"))

    with pytest.raises(TransientProviderError) as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.status_code == status
    assert caught.value.retry_after is None


def test_it_turns_401_into_permanent_with_the_message_but_not_the_key(
    server: FakeOpenAIServer,
) -> None:
    server.script(status=401, body=error_body(f"Incorrect API key provided: {API_KEY}."))

    with pytest.raises(PermanentProviderError) as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.status_code == 401
    assert "Incorrect API key provided" in str(caught.value)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_it_turns_other_client_errors_into_permanent(server: FakeOpenAIServer, status: int) -> None:
    server.script(status=status, body=error_body("The model `nope` does not exist"))

    with pytest.raises(PermanentProviderError) as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.status_code == status
    assert "does not exist" in str(caught.value)


def test_it_turns_a_timeout_into_transient(server: FakeOpenAIServer) -> None:
    server.script(body=chat_completion_body(json.dumps(OUTLINE)), delay_s=3.0)

    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="timed out"):
        provider_for(server, timeout_s=0.3).complete(outline_request())

    assert time.monotonic() - started < 2.5
    assert len(server.requests) == 1


def test_it_turns_a_refused_connection_into_transient() -> None:
    with running_openai_server() as stopped:
        base_url = stopped.base_url
    provider = OpenAIProvider(api_key=API_KEY, base_url=base_url, timeout_s=2.0)

    with pytest.raises(TransientProviderError) as caught:
        provider.complete(outline_request())

    assert caught.value.status_code is None
    assert API_KEY not in str(caught.value)


def test_it_does_not_retry_inside_the_sdk_with_the_settings(
    server: FakeOpenAIServer, settings: Any
) -> None:
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = server.base_url
    settings.OPENAI_MAX_RETRIES = 0
    server.script(status=503, body=error_body("overloaded", "server_error"))

    with pytest.raises(TransientProviderError):
        OpenAIProvider.from_settings().complete(outline_request())

    assert len(server.requests) == 1
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


# --- invalid output -----------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["Sure! Here is your outline.", "[1, 2]", '"text"', ""])
def test_it_raises_invalid_output_for_content_that_is_not_a_json_object(
    server: FakeOpenAIServer, content: str
) -> None:
    server.replies["CourseOutline"] = content

    with pytest.raises(InvalidOutputError) as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.raw_text == content
    assert caught.value.usage.input_tokens == 120  # the failed call still cost tokens


def test_it_raises_invalid_output_for_a_refusal(server: FakeOpenAIServer) -> None:
    server.script(body=chat_completion_body(None, refusal="I can't help with that."))

    with pytest.raises(InvalidOutputError, match="refused") as caught:
        provider_for(server).complete(outline_request())

    assert caught.value.raw_text == "I can't help with that."


def test_it_raises_invalid_output_for_a_reply_cut_off_at_the_token_limit(
    server: FakeOpenAIServer,
) -> None:
    server.script(body=chat_completion_body('{"title": "Intro', finish_reason="length"))

    with pytest.raises(InvalidOutputError, match="token limit"):
        provider_for(server).complete(outline_request(max_output_tokens=5))


@pytest.mark.parametrize("mode", ["json_schema", "llamacpp"])
def test_it_only_listens_on_localhost(mode: Mode) -> None:
    with running_openai_server(mode=mode) as running:
        assert running.base_url.startswith("http://127.0.0.1:")
