"""The openai moderation path (`omni-moderation-latest` through the official SDK), against the
loopback server in tests/openai_server.py: never the network."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from generation.models import CourseGenerationJob, GenerationAttempt
from generation.providers import (
    ModerationRequest,
    PermanentProviderError,
    TransientProviderError,
)
from generation.providers.openai import OpenAIProvider
from tests.openai_server import FakeOpenAIServer, running_openai_server


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with running_openai_server() as running:
        yield running


def _provider(server: FakeOpenAIServer) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test", base_url=server.base_url, timeout_s=5)


def test_it_calls_the_moderation_endpoint_and_maps_its_categories_to_ours(
    server: FakeOpenAIServer,
) -> None:
    texts = ("Fractions", "UNSAFE:illicit/violent UNSAFE:self-harm/intent", "UNSAFE:harassment")

    result = _provider(server).moderate(
        ModerationRequest(texts=texts, model="omni-moderation-latest")
    )

    (request,) = server.requests
    assert request.path == "/v1/moderations"
    assert request.body == {"model": "omni-moderation-latest", "input": list(texts)}
    assert result.flagged and result.categories == ("harassment", "self_harm", "dangerous")
    assert result.per_text == ((), ("self_harm", "dangerous"), ("harassment",))
    assert result.scores["dangerous"] == pytest.approx(0.97)
    assert result.scores["hate"] == pytest.approx(0.001)
    assert (result.model, result.provider) == ("omni-moderation-latest", "openai")


def test_it_passes_text_the_endpoint_does_not_flag(server: FakeOpenAIServer) -> None:
    result = _provider(server).moderate(
        ModerationRequest(texts=("History of the Holocaust",), model="omni-moderation-latest")
    )

    assert not result.flagged and result.categories == () and result.per_text == ((),)


def test_it_classifies_moderation_errors_like_completion_errors(server: FakeOpenAIServer) -> None:
    server.script(status=429, headers={"retry-after": "3"}, body={"error": {"message": "slow"}})
    server.script(status=400, body={"error": {"message": "bad input"}})
    request = ModerationRequest(texts=("x",), model="omni-moderation-latest")

    with pytest.raises(TransientProviderError) as transient:
        _provider(server).moderate(request)
    with pytest.raises(PermanentProviderError):
        _provider(server).moderate(request)

    assert transient.value.retry_after == 3.0


@pytest.mark.django_db(transaction=True)
def test_it_moderates_submits_with_the_openai_endpoint_when_configured(
    server: FakeOpenAIServer, settings: Any, client_for: Any, teacher: Any, base_class: Any
) -> None:
    settings.COURSEGEN_MODERATION_PROVIDER = "openai"
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = server.base_url
    server.moderation = lambda text: {"violence/graphic"} if "gore" in text.lower() else set()
    client = client_for(teacher)
    body = {"base_class": str(base_class.pk), "num_modules": 1, "lessons_per_module": 1}

    refused = client.post("/api/jobs/", {**body, "topic": "Gore for fun"}, format="json")
    admitted = client.post("/api/jobs/", {**body, "topic": "Volcanoes"}, format="json")

    assert refused.status_code == 422 and refused.json()["categories"] == ["violence"]
    assert admitted.status_code == 201, admitted.json()
    job = CourseGenerationJob.objects.get()
    moderation_calls = GenerationAttempt.objects.filter(task__job=job, kind="moderation")
    assert set(moderation_calls.values_list("model", flat=True)) == {"omni-moderation-latest"}
    # the request, then every task's output (the outline and the planned tasks), at cost 0
    moderated = [r for r in server.requests if r.path == "/v1/moderations"]
    assert len(moderated) == 2 + job.tasks.count() == moderation_calls.count() + 1
    assert not moderation_calls.exclude(cost_usd=0).exists()
