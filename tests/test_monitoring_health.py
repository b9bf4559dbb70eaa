"""GET /api/health/course-generation: 503 naming what fails, 200 with a live worker, no secrets;
the report cached and shared by concurrent callers, the status alone for anonymous callers, a
throttle; GET /health/live touches nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient

from generation.models import ProviderConstraint
from monitoring import health
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
def test_it_tells_anonymous_callers_only_the_status(settings: Any) -> None:
    settings.REDIS_URL = f"redis://:s3cret-pw@127.0.0.1:{_closed_port()}/0"

    response = APIClient().get(URL)

    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy"}  # no part names, timings or errors


@pytest.mark.django_db
def test_it_shows_the_details_to_the_health_token_only(settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.MONITORING_HEALTH_TOKEN = "probe-token-123"

    wrong = APIClient().get(URL, HTTP_AUTHORIZATION="Bearer probe-token-12")
    right = APIClient().get(URL, HTTP_AUTHORIZATION="Bearer probe-token-123")

    assert wrong.json() == {"status": "unhealthy"}
    assert right.status_code == 503 and "redis" in right.json()["failing"]
    assert right.json()["checks"]["redis"]["ok"] is False


@pytest.mark.django_db
def test_it_throttles_readiness_calls_per_client(
    settings: Any, ratelimit_clock_still: float
) -> None:
    settings.MONITORING_HEALTH_RATE = "3/m"
    client = APIClient()

    codes = [client.get(URL).status_code for _ in range(4)]

    assert 429 not in codes[:3] and codes[3] == 429


@pytest.mark.django_db
def test_liveness_touches_neither_the_database_nor_the_checks(
    monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    def no_checks() -> None:
        raise AssertionError("liveness ran the readiness checks")

    monkeypatch.setattr(health, "health_report", no_checks)

    with django_assert_num_queries(0):
        response = Client().get("/health/live")

    assert response.status_code == 200 and response.json() == {"status": "alive"}
    assert Client().post("/health/live").status_code == 405


# --- 50 concurrent anonymous callers ---------------------------------------------------------
def _burst(n: int) -> list[Any]:
    """n anonymous GETs released together, each from its own thread (and connection)."""
    barrier = threading.Barrier(n)

    def call(_: int) -> Any:
        barrier.wait()
        try:
            return Client().get(URL)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_anonymous_calls_ping_the_broker_once_per_cache_period(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MONITORING_HEALTH_CACHE_S = 1
    settings.MONITORING_HEALTH_RATE = "1000/m"
    pings: list[str] = []
    lock = threading.Lock()
    real_broker = health.check_broker

    def slow_broker() -> health.Check:
        with lock:
            pings.append("broker")
        time.sleep(0.3)  # a slow broker: the other callers arrive while this one waits
        return real_broker()

    def workers(*, broker_ok: bool) -> health.Check:
        with lock:
            pings.append("workers")
        return health.Check("workers", True, {"live": 1})

    monkeypatch.setattr(health, "check_broker", slow_broker)
    monkeypatch.setattr(health, "check_workers", workers)

    first = _burst(50)
    assert sorted(pings) == ["broker", "workers"]  # one ping for fifty callers
    time.sleep(1.1)  # the cache period ends
    second = _burst(50)

    assert sorted(pings) == ["broker", "broker", "workers", "workers"]
    for response in first + second:
        assert response.status_code == 200, response.content
        assert response.json() == {"status": "healthy"}


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
