"""The openai provider's Batch API path through the official SDK, against the loopback server's
emulated /v1/files and /v1/batches (docs/batch.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from generation import services
from generation.batch_models import BatchRequestStatus
from generation.models import (
    AttemptKind,
    BatchRequest,
    GenerationAttempt,
    JobStatus,
    Urgency,
)
from generation.providers.base import (
    BATCH_KEY,
    BatchLine,
    CompletionRequest,
    Message,
    TransientProviderError,
)
from generation.providers.openai import OpenAIProvider
from generation.schemas import CourseOutline, CourseRequest, TaskKind, Tier
from tests.openai_server import FakeOpenAIServer, running_openai_server


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with running_openai_server() as fake:
        yield fake


def _provider(server: FakeOpenAIServer) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test", base_url=server.base_url, timeout_s=5)


def _line(custom_id: str) -> BatchLine:
    request = CompletionRequest(
        messages=(Message("system", "You write courses."), Message("user", "An outline.")),
        schema=CourseOutline,
        model="gpt-4.1-mini",
        tier=Tier.COMPLEX,
        task_kind=TaskKind.OUTLINE,
    )
    return BatchLine(custom_id, request)


def test_it_uploads_jsonl_creates_a_batch_and_maps_every_line_back(
    server: FakeOpenAIServer,
) -> None:
    server.replies["CourseOutline"] = {"title": "Tides"}
    server.batch_failed = {"task-2-try-1"}
    server.batch_unanswered = {"task-3-try-1"}
    provider = _provider(server)

    file_id = provider.batch_upload([_line(f"task-{n}-try-1") for n in (1, 2, 3)])
    state = provider.batch_create(input_file_id=file_id, metadata={"coursegen_batch": "7"})
    first = provider.batch_retrieve(state.id)
    ended = provider.batch_retrieve(state.id)
    results = {r.custom_id: r for r in provider.batch_results(ended)}

    uploaded = [json.loads(x) for x in server.files[file_id].splitlines()]
    assert [u["custom_id"] for u in uploaded] == ["task-1-try-1", "task-2-try-1", "task-3-try-1"]
    assert {u["url"] for u in uploaded} == {"/v1/chat/completions"}
    assert uploaded[0]["body"]["response_format"]["type"] == "json_schema"
    assert server.batches[state.id]["metadata"] == {"coursegen_batch": "7"}
    assert server.batches[state.id]["completion_window"] == "24h"
    assert (state.status, first.status, ended.status) == ("in_progress", "in_progress", "expired")
    assert ended.output_file_id and ended.error_file_id
    answered = results["task-1-try-1"].completion
    assert answered is not None and answered.data == {"title": "Tides"}
    assert answered.usage.input_tokens == 120
    assert isinstance(results["task-2-try-1"].error, TransientProviderError)
    assert results["task-2-try-1"].code == "http_500"
    assert results["task-3-try-1"].code == "batch_expired"


def test_it_cancels_a_batch(server: FakeOpenAIServer) -> None:
    provider = _provider(server)
    state = provider.batch_create(
        input_file_id=provider.batch_upload([_line("task-1-try-1")]), metadata={}
    )

    assert provider.batch_cancel(state.id).status == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_a_batch_jobs_outline_goes_through_the_sdk_and_the_rest_follows(
    server: FakeOpenAIServer, settings: Any, teacher: Any, base_class: Any
) -> None:
    settings.COURSEGEN_CACHE_ENABLED = False
    request = CourseRequest(topic="Tides and the moon", num_modules=1, lessons_per_module=1)
    live = services.job_submit(user=teacher, base_class=base_class, request=request)
    live.refresh_from_db()
    server.replies["CourseOutline"] = live.outline  # a valid outline, made by the simulator
    job = services.job_submit(
        user=teacher, base_class=base_class, request=request, urgency=Urgency.BATCH
    )
    provider = _provider(server)

    services.batch_poll(provider=provider)  # submitted, in progress
    services.batch_poll(provider=provider)  # ended: the outline applied, the rest queued

    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.outline == live.outline
    outline = job.tasks.get(kind=TaskKind.OUTLINE)
    assert outline.status == "succeeded"
    attempts = GenerationAttempt.objects.filter(task=outline).exclude(kind="moderation")
    assert [(a.kind, a.outcome) for a in attempts] == [(AttemptKind.BATCH, "ok")]
    services.batch_poll(provider=provider)  # the rest submitted: one batch per model
    queued = BatchRequest.objects.filter(task__job=job, status=BatchRequestStatus.SUBMITTED)
    assert queued.count() == job.tasks.count() - 1
    assert len(server.batches) == 3
    assert [r.path for r in server.requests].count("/v1/chat/completions") == 0  # no live call


def test_it_finds_a_batch_and_its_file_by_the_key_a_killed_poller_gave_them(
    server: FakeOpenAIServer,
) -> None:
    server.page_size = 1  # one item a page: the SDK walks the pages
    provider = _provider(server)
    since = time.time() - 60
    made = {}
    for key in ("k1", "k2", "k3"):
        file_id = provider.batch_upload([_line("task-1-try-1")], filename=f"cg-{key}.jsonl")
        made[key] = provider.batch_create(input_file_id=file_id, metadata={BATCH_KEY: key})

    found = provider.batch_find("k1", since=since)  # the oldest: on the last page

    assert found is not None and found.id == made["k1"].id
    assert provider.batch_find("k9", since=since) is None
    assert provider.batch_find("k1", since=time.time() + 60) is None  # older than asked for
    k2_file = provider.batch_file_find("cg-k2.jsonl", since=since)
    assert k2_file is not None and server.batches[made["k2"].id]["input_file_id"] == k2_file
    assert provider.batch_file_find("cg-k9.jsonl", since=since) is None
    listed = [r.path for r in server.requests if r.path.startswith("/v1/batches?")]
    assert len(listed) >= 3 and any("after=" in p for p in listed)
