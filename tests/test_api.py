"""The job API: submit, list, detail, course, cancel; auth, tenancy and bad input."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from coursegen import db
from generation.models import CourseGenerationJob, JobStatus
from tests.factories import BaseClassFactory, OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)

VALID = {"topic": "Fractions for beginners", "num_modules": 2, "lessons_per_module": 2}


def _submit(client: Any, base_class: Any, **body: Any) -> Any:
    return client.post(
        "/api/jobs/", {"base_class": str(base_class.pk), **VALID, **body}, format="json"
    )


def test_it_submits_a_job_and_returns_the_finished_course(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    client = client_for(teacher)

    response = _submit(client, base_class)

    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]
    assert response["Location"] == f"/api/jobs/{job_id}/"
    detail = client.get(f"/api/jobs/{job_id}/").json()
    assert detail["status"] == JobStatus.SUCCEEDED
    assert detail["progress"] == 100
    assert len(detail["tasks"]) == 1 + 2 * 2 * 3 + 2 + 2
    assert {t["status"] for t in detail["tasks"]} == {"succeeded"}
    assert float(detail["cost_usd"]) > 0
    course = client.get(f"/api/jobs/{job_id}/course/").json()
    assert [len(m["lessons"]) for m in course["modules"]] == [2, 2]


def test_it_rejects_unauthenticated_requests(
    api_client: Any, client_for: Any, teacher: Any, base_class: Any
) -> None:
    job_id = _submit(client_for(teacher), base_class).json()["id"]
    assert api_client.get("/api/jobs/").status_code == 401
    assert _submit(api_client, base_class).status_code == 401
    assert api_client.get(f"/api/jobs/{job_id}/progress/").status_code == 401


@pytest.fixture(params=["sql", "orm"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """PostgreSQL's hand-written reads, and the ORM's (SQLite, the demo)."""
    if request.param == "orm":
        monkeypatch.setattr(db, "hand_written_sql", lambda: False)
    return str(request.param)


def test_the_progress_poll_agrees_with_the_job_detail(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any, read_path: str
) -> None:
    from generation import services

    client = client_for(teacher)
    done = _submit(client, base_class).json()["id"]  # eager Celery: finished on return
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)  # stays queued
    queued = _submit(client, base_class).json()["id"]

    for job_id, status, position in ((queued, "queued", 1), (done, "succeeded", None)):
        progress = client.get(f"/api/jobs/{job_id}/progress/").json()
        detail = client.get(f"/api/jobs/{job_id}/").json()
        assert progress["status"] == status and progress["queue_position"] == position
        assert progress == {key: detail[key] for key in progress}
    assert client.get(f"/api/jobs/{done}/progress/").json()["course_url"] == (
        f"/api/jobs/{done}/course/"
    )


def test_a_submit_answers_what_the_job_detail_shows_without_reading_the_job_back(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    from generation import services

    client = client_for(teacher)
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)  # stays queued

    with CaptureQueriesContext(connection) as queries:
        submitted = _submit(client, base_class).json()
    # Read now: the next request clears the connection's query log.
    reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]

    assert submitted == client.get(f"/api/jobs/{submitted['id']}/").json()
    assert [t["kind"] for t in submitted["tasks"]] == ["outline"]
    assert not [sql for sql in reads if 'FROM "course_generation_tasks"' in sql]
    assert not [sql for sql in reads if 'FROM "course_generation_jobs"' in sql]


def test_it_answers_400_with_field_errors_and_creates_nothing(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    client = client_for(teacher)

    response = _submit(
        client, base_class, topic="", num_modules=99, level="expert", language="english"
    )

    assert response.status_code == 400
    body = response.json()
    assert {"topic", "num_modules", "level", "language"} <= set(body)
    assert CourseGenerationJob.objects.count() == 0


def test_it_rejects_a_class_of_another_organisation(client_for: Any, teacher: Any) -> None:
    foreign_class = BaseClassFactory(organisation=OrganisationFactory())

    response = _submit(client_for(teacher), foreign_class)
    missing = _submit(client_for(teacher), SimpleNamespace(pk=uuid.uuid4()))

    assert response.status_code == 400 and missing.status_code == 400
    assert response.json()["base_class"] == ["No such class in your organisations."]
    assert missing.json()["base_class"] == ["No such class in your organisations."]
    assert CourseGenerationJob.objects.count() == 0


def test_it_ignores_a_role_sent_in_the_request(
    client_for: Any, make_member: Any, base_class: Any
) -> None:
    student = make_member(Role.STUDENT)

    response = _submit(client_for(student), base_class, role="admin", priority=0)

    assert response.status_code == 201
    job = CourseGenerationJob.objects.get()
    assert job.priority == 8  # the student's priority, read from the membership


def test_it_hides_other_organisations_jobs(
    client_for: Any, teacher: Any, base_class: Any, make_member: Any, read_path: str
) -> None:
    job_id = _submit(client_for(teacher), base_class).json()["id"]
    outsider = make_member(Role.ADMIN, org=OrganisationFactory())
    client = client_for(outsider)

    assert client.get(f"/api/jobs/{job_id}/").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/progress/").status_code == 404
    assert client_for(teacher).get(f"/api/jobs/{uuid.uuid4()}/progress/").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/course/").status_code == 404
    assert client.post(f"/api/jobs/{job_id}/cancel/").status_code == 404
    assert client.get("/api/jobs/").json()["count"] == 0


def test_it_shows_students_only_their_own_jobs(
    client_for: Any, teacher: Any, base_class: Any, make_member: Any, read_path: str
) -> None:
    teacher_job = _submit(client_for(teacher), base_class).json()["id"]
    student = make_member(Role.STUDENT)
    student_job = _submit(client_for(student), base_class).json()["id"]

    listed = {j["id"] for j in client_for(student).get("/api/jobs/").json()["results"]}
    assert listed == {student_job}
    assert client_for(student).get(f"/api/jobs/{teacher_job}/").status_code == 404
    assert client_for(student).get(f"/api/jobs/{teacher_job}/progress/").status_code == 404
    assert client_for(student).get(f"/api/jobs/{student_job}/progress/").status_code == 200
    assert client_for(teacher).get(f"/api/jobs/{student_job}/progress/").status_code == 200
    teacher_sees = {j["id"] for j in client_for(teacher).get("/api/jobs/").json()["results"]}
    assert teacher_sees == {teacher_job, student_job}


def test_it_cancels_a_queued_job_and_refuses_to_cancel_twice(
    client_for: Any, teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 1
    client = client_for(teacher)
    blocker = CourseGenerationJob.objects.create(
        owner=teacher,
        organisation=base_class.organisation,
        base_class=base_class,
        request={"topic": "x"},
        status=JobStatus.RUNNING,
    )
    from generation.models import QueueEntry, QueueState

    QueueEntry.objects.create(job=blocker, state=QueueState.CLAIMED)
    job = _submit(client, base_class).json()
    assert job["status"] == "queued" and job["queue_position"] == 1

    cancelled = client.post(f"/api/jobs/{job['id']}/cancel/")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert client.post(f"/api/jobs/{job['id']}/cancel/").status_code == 409
    assert client.get(f"/api/jobs/{job['id']}/course/").status_code == 409


def test_it_serves_the_openapi_schema(client_for: Any, teacher: Any) -> None:
    response = client_for(teacher).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "/api/jobs/" in response.json()["paths"]
