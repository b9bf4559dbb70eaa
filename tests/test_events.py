"""Progress as server-sent events (GET /api/jobs/<id>/events/): auth, scoping, bad input, the
events themselves against the progress poll, and the hub that reads every followed job at once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from accounts.models import Role
from coursegen import db
from generation import events
from generation.models import CourseGenerationJob, JobStatus, Priority, QueueEntry
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)

VALID = {"topic": "Fractions for beginners", "num_modules": 1, "lessons_per_module": 1}
STREAM = {"HTTP_ACCEPT": "text/event-stream"}


@pytest.fixture(autouse=True)
def hub(monkeypatch: pytest.MonkeyPatch, settings: Any) -> events.ProgressHub:
    """A hub of this test's own whose thread never ticks by itself: the tests tick it."""
    settings.COURSEGEN_EVENTS_POLL_S = 3600.0
    settings.COURSEGEN_EVENTS_HEARTBEAT_S = 0.05
    fresh = events.ProgressHub()
    monkeypatch.setattr(events, "hub", fresh)
    return fresh


@pytest.fixture(params=["sql", "orm"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """PostgreSQL's hand-written reads, and the ORM's (SQLite, the demo)."""
    if request.param == "orm":
        monkeypatch.setattr(db, "hand_written_sql", lambda: False)
    return str(request.param)


def _submit(client: Any, base_class: Any, **body: Any) -> str:
    response = client.post(
        "/api/jobs/", {"base_class": str(base_class.pk), **VALID, **body}, format="json"
    )
    assert response.status_code == 201, response.json()
    return str(response.json()["id"])


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Submitted jobs stay queued (eager Celery would otherwise finish them on submit)."""
    from generation import services

    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)


def _parse(chunk: bytes) -> list[tuple[str, Any]]:
    """(field, value) per line of a chunk: data lines JSON-decoded, comments as ':'."""
    out: list[tuple[str, Any]] = []
    for line in chunk.decode().split("\n"):
        if line.startswith(":"):
            out.append((":", line[1:].strip()))
        elif line:
            name, _, value = line.partition(": ")
            out.append((name, json.loads(value) if name == "data" else value))
    return out


def _data(chunk: bytes) -> dict[str, Any]:
    found = [value for name, value in _parse(chunk) if name == "data"]
    assert len(found) == 1, chunk
    data: dict[str, Any] = found[0]
    return data


def _stream(client: Any, job_id: str) -> Iterator[bytes]:
    response = client.get(f"/api/jobs/{job_id}/events/", **STREAM)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    return iter(response.streaming_content)


def test_a_finished_job_streams_its_progress_once_and_ends(
    client_for: Any, teacher: Any, base_class: Any, read_path: str
) -> None:
    client = client_for(teacher)
    job_id = _submit(client, base_class)  # eager Celery: finished on return

    chunks = list(_stream(client, job_id))

    assert len(chunks) == 1
    fields = _parse(chunks[0])
    assert fields[0] == ("retry", "2000") and fields[1] == ("event", "progress")
    assert _data(chunks[0]) == client.get(f"/api/jobs/{job_id}/progress/").json()
    assert _data(chunks[0])["status"] == JobStatus.SUCCEEDED


def test_a_queued_job_streams_each_change_until_it_ends(
    client_for: Any,
    teacher: Any,
    base_class: Any,
    held: None,
    hub: events.ProgressHub,
    read_path: str,
) -> None:
    client = client_for(teacher)
    first_id, job_id = _submit(client, base_class), _submit(client, base_class)
    stream = _stream(client, job_id)

    first = _data(next(stream))
    assert (first["status"], first["queue_position"]) == ("queued", 2)
    assert hub.following() == 1

    hub.tick()  # nothing changed: no event, a keep-alive comment after the heartbeat
    assert _parse(next(stream)) == [(":", "keep-alive")]

    QueueEntry.objects.filter(job_id=uuid.UUID(first_id)).update(state="claimed")
    CourseGenerationJob.objects.filter(pk=first_id).update(status=JobStatus.RUNNING)
    hub.tick()
    moved = _data(next(stream))
    assert moved == client.get(f"/api/jobs/{job_id}/progress/").json()
    assert moved["queue_position"] == 1

    QueueEntry.objects.filter(job_id=uuid.UUID(job_id)).update(state="cancelled")
    CourseGenerationJob.objects.filter(pk=job_id).update(status=JobStatus.CANCELLED)
    hub.tick()
    last = _data(next(stream))
    assert (last["status"], last["queue_position"]) == ("cancelled", None)
    assert last == client.get(f"/api/jobs/{job_id}/progress/").json()
    with pytest.raises(StopIteration):  # the terminal event ends the stream
        next(stream)
    assert hub.following() == 0


def test_a_second_stream_gets_a_change_the_hub_saw_before_it_subscribed(
    client_for: Any, teacher: Any, base_class: Any, held: None, hub: events.ProgressHub
) -> None:
    """A stream reads its first event in the view but subscribes when its body starts: a tick in
    between, for a job another stream already follows, must not be taken as already sent."""
    client = client_for(teacher)
    job_id = _submit(client, base_class)
    one = _stream(client, job_id)
    assert _data(next(one))["status"] == "queued"
    hub.tick()  # the hub has seen the job queued

    two = _stream(client, job_id)  # its first event read now (queued), its body not started
    QueueEntry.objects.filter(job_id=uuid.UUID(job_id)).update(state="claimed")
    CourseGenerationJob.objects.filter(pk=job_id).update(status=JobStatus.RUNNING)
    hub.tick()  # seen: running; wakes `one` only, `two` does not follow yet
    assert _data(next(one))["status"] == "running"

    assert _data(next(two))["status"] == "queued"
    hub.tick()  # nothing changed since the last tick, but `two` has not had it
    assert _data(next(two))["status"] == "running"
    hub.tick()  # and only once
    assert _parse(next(two)) == [(":", "keep-alive")]

    CourseGenerationJob.objects.filter(pk=job_id).update(status=JobStatus.CANCELLED)
    hub.tick()
    for stream in (one, two):
        assert _data(next(stream))["status"] == "cancelled"
        with pytest.raises(StopIteration):
            next(stream)
    assert hub.following() == 0


def test_the_hub_reads_what_the_poll_answers_for_every_followed_job(
    client_for: Any, make_member: Any, base_class: Any, held: None, read_path: str
) -> None:
    client = client_for(make_member(Role.ADMIN))  # a teacher may have 3 unfinished jobs
    ids = [_submit(client, base_class) for _ in range(4)]
    # Priorities reorder the queue: the hub's positions must be the poll's.
    CourseGenerationJob.objects.filter(pk=ids[2]).update(priority=Priority.URGENT)
    QueueEntry.objects.filter(job_id=uuid.UUID(ids[2])).update(priority=Priority.URGENT)
    QueueEntry.objects.filter(job_id=uuid.UUID(ids[0])).update(state="claimed")
    CourseGenerationJob.objects.filter(pk=ids[0]).update(status=JobStatus.RUNNING, progress=40)
    from generation.selectors import jobs_progress
    from generation.serializers import JobProgressOutputSerializer

    read = {
        str(job.pk): JobProgressOutputSerializer(job).data
        for job in jobs_progress(job_ids=[uuid.UUID(i) for i in ids])
    }

    polled = {i: client.get(f"/api/jobs/{i}/progress/").json() for i in ids}
    assert read == polled
    assert [polled[i]["queue_position"] for i in ids] == [None, 2, 1, 3]


def test_a_stream_ends_when_the_client_goes_or_after_its_longest_life(
    client_for: Any,
    teacher: Any,
    base_class: Any,
    held: None,
    hub: events.ProgressHub,
    settings: Any,
) -> None:
    client = client_for(teacher)
    job_id = _submit(client, base_class)
    response = client.get(f"/api/jobs/{job_id}/events/", **STREAM)
    stream = iter(response.streaming_content)
    next(stream)
    assert hub.following() == 1
    response.close()  # what the server does when a write to a gone client fails
    assert hub.following() == 0

    settings.COURSEGEN_EVENTS_MAX_S = 0.2
    chunks = list(_stream(client, job_id))  # ends by itself, keep-alives meanwhile
    assert _data(chunks[0])["status"] == "queued"
    assert {line for chunk in chunks[1:] for line in _parse(chunk)} <= {(":", "keep-alive")}
    assert hub.following() == 0


def test_a_deleted_job_ends_its_streams(
    client_for: Any, teacher: Any, base_class: Any, held: None, hub: events.ProgressHub
) -> None:
    client = client_for(teacher)
    job_id = _submit(client, base_class)
    stream = _stream(client, job_id)
    next(stream)

    CourseGenerationJob.objects.filter(pk=job_id).delete()
    hub.tick()

    with pytest.raises(StopIteration):
        next(stream)


def test_only_those_who_may_see_the_job_can_follow_it(
    api_client: Any,
    client_for: Any,
    teacher: Any,
    base_class: Any,
    make_member: Any,
    held: None,
    hub: events.ProgressHub,
) -> None:
    job_id = _submit(client_for(teacher), base_class)
    student = make_member(Role.STUDENT)
    student_job = _submit(client_for(student), base_class)
    outsider = make_member(Role.ADMIN, org=OrganisationFactory())

    anonymous = api_client.get(f"/api/jobs/{job_id}/events/", **STREAM)
    assert anonymous.status_code == 401
    assert anonymous["Content-Type"] == "application/json"  # not a 406 for its Accept
    assert "detail" in anonymous.json()
    for client, target in (
        (client_for(outsider), job_id),  # another organisation's job
        (client_for(student), job_id),  # a student sees only their own jobs
        (client_for(teacher), str(uuid.uuid4())),  # no such job
    ):
        response = client.get(f"/api/jobs/{target}/events/", **STREAM)
        assert response.status_code == 404
        assert response.json() == {"detail": "No such job."}
    not_a_uuid = client_for(teacher).get("/api/jobs/not-a-uuid/events/", **STREAM)
    assert not_a_uuid.status_code == 404 and not_a_uuid["Content-Type"] == "application/json"
    assert client_for(teacher).post(f"/api/jobs/{job_id}/events/").status_code == 405
    # The owner student and the organisation's teacher may follow the student's job.
    assert _data(next(_stream(client_for(student), student_job)))["id"] == student_job
    assert _data(next(_stream(client_for(teacher), student_job)))["id"] == student_job
    assert hub.following() == 2


def test_a_head_request_does_not_follow_the_job(
    teacher: Any,
    client_for: Any,
    base_class: Any,
    held: None,
    hub: events.ProgressHub,
    settings: Any,
) -> None:
    """gunicorn iterates a HEAD response's body without writing it, so a followed job held the
    connection, its greenlet and a subscription for COURSEGEN_EVENTS_MAX_S after the client had
    its headers and gone. (The test client drops a HEAD body unread, so the view is called.)"""
    from rest_framework.test import APIRequestFactory, force_authenticate

    from generation.apis import JobEventsApi

    settings.COURSEGEN_EVENTS_MAX_S = 1.0
    job_id = _submit(client_for(teacher), base_class)
    request = APIRequestFactory().head(
        f"/api/jobs/{job_id}/events/", HTTP_ACCEPT=STREAM["HTTP_ACCEPT"]
    )
    force_authenticate(request, user=teacher)
    response: Any = JobEventsApi.as_view()(request, job_id=uuid.UUID(job_id))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    body = iter(response.streaming_content)
    assert hub.following() == 0
    assert list(body) == []
    assert hub.following() == 0
