"""The OpenAPI schema says what the API does (issue 21, item 5): the paginated job list and its
parameters, every error status with its body, and the real constraints of the inputs.
tests/test_schemathesis.py checks the responses against it; these check what it says."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _body(schema: dict[str, Any], op: dict[str, Any], code: str) -> dict[str, Any]:
    return _resolve(schema, op["responses"][code]["content"]["application/json"]["schema"])


def test_the_job_list_is_documented_as_a_page_with_its_parameters(schema: dict[str, Any]) -> None:
    listing = schema["paths"]["/api/jobs/"]["get"]

    page = _body(schema, listing, "200")
    params = {p["name"]: p for p in listing["parameters"]}

    assert set(page["properties"]) == {"count", "next", "previous", "results"}
    assert page["properties"]["results"]["type"] == "array"
    assert set(params) == {"limit", "offset", "status"}
    assert params["limit"]["schema"]["minimum"] == 1 and "200" in params["limit"]["description"]
    assert "succeeded" in params["status"]["schema"]["enum"]


def test_every_operation_documents_401_and_its_error_statuses(schema: dict[str, Any]) -> None:
    for method, path, op in _operations(schema):
        codes = set(op["responses"])
        assert "401" in codes, (method, path)
        if "{" in path:
            assert "404" in codes, (method, path)
        if "requestBody" in op:
            assert {"400", "413", "415"} <= codes, (method, path)
        for code in codes - {"200", "201", "202"}:
            assert "content" in op["responses"][code], (method, path, code)


def test_every_throttled_operation_documents_one_429_body(schema: dict[str, Any]) -> None:
    throttled = [op for _, _, op in _operations(schema)]  # the health check's throttle too

    bodies = {
        op["responses"]["429"]["content"]["application/json"]["schema"]["$ref"] for op in throttled
    }

    assert bodies == {"#/components/schemas/RateLimitExceededOutput"}
    window = _resolve(schema, _resolve(schema, {"$ref": bodies.pop()})["properties"]["window"])
    assert {"requests", "concurrent", "tasks_hour"} <= set(window["enum"])


def test_the_error_bodies_are_told_apart_by_their_fields(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]

    field_errors = components["FieldErrorsOutput"]
    error = components["ErrorOutput"]

    assert field_errors["additionalProperties"]["oneOf"][0]["type"] == "array"
    assert error["required"] == ["detail"] and error["additionalProperties"] is False
    submit_400 = _body(schema, schema["paths"]["/api/jobs/"]["post"], "400")
    assert [s["$ref"].rsplit("/", 1)[1] for s in submit_400["oneOf"]] == [
        "FieldErrorsOutput",
        "ErrorOutput",
        "RequestTooLargeOutput",
    ]


def test_the_idempotency_key_and_organisation_carry_their_constraints(
    schema: dict[str, Any],
) -> None:
    submit = schema["paths"]["/api/jobs/"]["post"]
    usage = schema["paths"]["/api/user/rate-limits/"]["get"]

    (key,) = [p for p in submit["parameters"] if p["name"] == "Idempotency-Key"]
    (organisation,) = [p for p in usage["parameters"] if p["name"] == "organisation"]

    assert key["in"] == "header"
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
    assert organisation["schema"] == {"type": "string", "format": "uuid"}
    assert {"400", "404"} <= set(usage["responses"])


def test_regenerate_documents_a_string_instruction(schema: dict[str, Any]) -> None:
    regenerate = schema["paths"]["/api/jobs/{job_id}/tasks/{task_id}/regenerate/"]["post"]

    body = _resolve(schema, regenerate["requestBody"]["content"]["application/json"]["schema"])

    assert body["properties"]["instruction"]["type"] == "string"
    assert body["properties"]["instruction"]["maxLength"] == 1000
