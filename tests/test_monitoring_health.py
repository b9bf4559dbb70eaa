"""GET /api/health/course-generation: 503 naming what fails, 200 with a live worker, no secrets."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from generation.models import ProviderConstraint
from tests.worker import celery_worker

URL = "/api/health/course-generation"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def _staff_client() -> APIClient:
    staff = get_user_model().objects.create_user("ops", is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    return client


@pytest.mark.django_db
def test_it_answers_503_naming_redis_when_redis_is_unreachable(settings: Any) -> None:
    settings.REDIS_URL = f"redis://:s3cret-pw@127.0.0.1:{_closed_port()}/0"

    response = _staff_client().get(URL)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert "redis" in body["failing"]
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True  # the broker is a different, live Redis db
    assert "s3cret-pw" not in response.content.decode()


@pytest.mark.django_db
def test_it_tells_anonymous_callers_only_the_status_and_the_failing_parts(
    settings: Any,
) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"

    response = APIClient().get(URL)

    assert response.status_code == 503
    assert set(response.json()) == {"status", "failing"}
    assert "redis" in response.json()["failing"]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_answers_200_when_everything_is_up(tmp_path: Path) -> None:
    with celery_worker(tmp_path, concurrency=2):
        response = _staff_client().get(URL)

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "healthy" and body["failing"] == []
    assert body["checks"]["workers"]["live"] >= 1
    assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["capacity"]["cap"] > 0
    assert body["checks"]["breakers"]["states"] == {
        "gpt-4.1-mini": "closed",
        "gpt-4.1-nano": "closed",
    }
    assert body["checks"]["queue"]["depth"] == 0


@pytest.mark.django_db
def test_it_reports_the_constraint_step_of_each_server_without_its_url_or_credentials(
    settings: Any,
) -> None:
    ProviderConstraint.objects.create(
        base_url="http://user:pw-secret@127.0.0.1:8080/v1", model="local", step="json_object_schema"
    )
    ProviderConstraint.objects.create(
        base_url="https://api.openai.com/v1", model="gpt-4.1-mini", step="json_schema"
    )

    body = _staff_client().get(URL).json()

    check = body["checks"]["constraints"]
    assert check["ok"] is True and "constraints" not in body["warnings"]
    assert check["servers"] == [
        {"server": "127.0.0.1:8080", "model": "local", "step": "json_object_schema"},
        {"server": "api.openai.com", "model": "gpt-4.1-mini", "step": "json_schema"},
    ]
    text = json.dumps(body)
    assert "pw-secret" not in text and "http" not in text


@pytest.mark.django_db
def test_the_admin_lists_the_constraint_of_each_server(client: Any) -> None:
    ProviderConstraint.objects.create(
        base_url="http://127.0.0.1:8080/v1",
        model="local",
        step="json_object_schema",
        refusals=[{"step": "json_schema", "status": 500, "message": "Input should be ..."}],
    )
    client.force_login(get_user_model().objects.create_superuser("root"))

    page = client.get("/admin/generation/providerconstraint/")

    assert page.status_code == 200
    assert "json_object_schema" in page.content.decode()
