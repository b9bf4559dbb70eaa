"""Regenerating one task of a finished course, duplicate questions across a course, and the
acceptance property: with 30% schema-invalid replies every course still completes, valid."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Q, Sum

from accounts.models import Role
from generation.checks import course_duplicates, is_near_duplicate
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    TaskStatus,
)
from generation.prompts import task_context
from generation.schemas import CourseOutline, Question, TaskKind
from generation.validation import validate_output
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog
from tests.courses import DuplicatingProvider, SpyProvider, finished_job
from tests.factories import BaseClassFactory, OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpyProvider]:
    provider = SpyProvider()
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)
    monkeypatch.setattr("generation.services.dedupe.get_provider", lambda: provider)
    monkeypatch.setattr("generation.regeneration.get_provider", lambda: provider)
    yield provider


def _url(job: CourseGenerationJob, task: GenerationTask) -> str:
    return f"/api/jobs/{job.id}/tasks/{task.pk}/regenerate/"


# --- Regenerating one task -----------------------------------------------------------------------
def test_it_regenerates_a_task_through_the_api_keeping_the_previous_version(
    client_for: Any, teacher: Any, base_class: Any, spy: SpyProvider
) -> None:
    job = finished_job(teacher, base_class)
    task = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l2")
    old_output, old_cost, old_course = task.output, job.cost_usd, job.course
    calls_before = len(spy.requests)

    response = client_for(teacher).post(
        _url(job, task), {"instruction": "Use simpler examples"}, format="json"
    )

    assert response.status_code == 202, response.json()
    body = response.json()
    assert [v["number"] for v in body["versions"]] == [1, 2]
    assert body["versions"][0]["instruction"] == ""
    assert body["versions"][1]["instruction"] == "Use simpler examples"
    assert body["versions"][1]["created_by"] == teacher.username
    assert body["regeneration"]["status"] == "succeeded"
    assert body["regeneration"]["version"] == 2
    versions = list(task.versions.order_by("number"))
    assert versions[0].output == old_output  # the previous version is kept
    assert versions[1].output == body["output"] != old_output
    job.refresh_from_db()
    assert job.course is not None and old_course is not None
    assert job.course["modules"][0]["lessons"][1]["section"] == versions[1].output
    assert job.course["modules"][0]["lessons"][0] == old_course["modules"][0]["lessons"][0]
    assert job.cost_usd > old_cost
    new_calls = spy.requests[calls_before:]
    assert {r.task_kind for r in new_calls} == {TaskKind.LESSON_SECTION}
    prompt = new_calls[0].messages[-1].content
    assert prompt.endswith(
        '<teacher_request>\n{"instruction": "Use simpler examples"}\n</teacher_request>'
    )  # the teacher's words as data, never in the system message
    assert "Use simpler examples" not in new_calls[0].messages[0].content
    flush_all()
    event = CourseGenerationLog.objects.get(task=task, event="task.regenerated")
    assert event.data["instruction"] == "Use simpler examples"


def test_it_lets_the_owner_and_org_staff_regenerate_and_hides_the_task_from_others(
    client_for: Any, make_member: Any, base_class: Any
) -> None:
    owner = make_member(Role.STUDENT)
    job = finished_job(owner, base_class)
    task = job.tasks.get(kind=TaskKind.METADATA)
    other_org = OrganisationFactory.create()
    outsider = make_member(Role.ADMIN, org=other_org)
    classmate = make_member(Role.STUDENT)

    for user in (outsider, classmate):
        assert client_for(user).post(_url(job, task), {}, format="json").status_code == 404
    other_job = finished_job(outsider, BaseClassFactory.create(organisation=other_org))
    foreign = other_job.tasks.get(kind=TaskKind.METADATA)
    assert client_for(owner).post(_url(job, foreign), {}, format="json").status_code == 404
    assert task.versions.count() == 0
    assert client_for(owner).post(_url(job, task), {}, format="json").status_code == 202
    admin = make_member(Role.ADMIN)
    assert client_for(admin).post(_url(job, task), {}, format="json").status_code == 202
    assert task.versions.count() == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [({"instruction": "x" * 1001}, "instruction"), ({"instructions": "simpler"}, "instructions")],
)
def test_it_rejects_a_bad_body_and_changes_nothing(
    client_for: Any, teacher: Any, base_class: Any, body: dict[str, str], field: str
) -> None:
    job = finished_job(teacher, base_class)
    task = job.tasks.get(kind=TaskKind.MIND_MAP)

    response = client_for(teacher).post(_url(job, task), body, format="json")

    assert response.status_code == 400
    assert field in response.json()
    task.refresh_from_db()
    assert task.versions.count() == 0 and task.runs == 1


def test_it_refuses_to_regenerate_the_outline_or_a_running_course(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    outline = job.tasks.get(kind=TaskKind.OUTLINE)
    metadata = job.tasks.get(kind=TaskKind.METADATA)

    response = client_for(teacher).post(_url(job, outline), {}, format="json")
    assert response.status_code == 409
    assert "outline cannot be regenerated" in response.json()["detail"]
    CourseGenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)
    response = client_for(teacher).post(_url(job, metadata), {}, format="json")
    assert response.status_code == 409
    assert "the job is running" in response.json()["detail"]


def test_it_regenerates_tasks_from_the_admin(
    client: Any, admin_user: Any, teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    task = job.tasks.get(kind=TaskKind.BRAIN_BYTES, key="m1.l1")
    client.force_login(admin_user)

    response = client.post(
        "/admin/generation/generationtask/",
        {"action": "regenerate_tasks", "_selected_action": [task.pk]},
    )

    assert response.status_code == 302
    assert list(task.versions.values_list("number", flat=True)) == [1, 2]
    assert task.versions.get(number=2).created_by == admin_user


# --- Near-duplicate questions across a course ------------------------------------------------
def test_it_regenerates_only_the_later_duplicate_question_at_finalize(
    monkeypatch: pytest.MonkeyPatch, teacher: Any, base_class: Any
) -> None:
    provider = DuplicatingProvider()
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)
    monkeypatch.setattr("generation.services.dedupe.get_provider", lambda: provider)
    monkeypatch.setattr("generation.regeneration.get_provider", lambda: provider)

    job = finished_job(teacher, base_class)

    parts = [r for r in provider.requests if r.context.get("part")]
    assert [(r.context["task_key"], r.context["part"], r.schema) for r in parts] == [
        ("m1.l2", "questions.0", Question)
    ]
    assert "near-duplicate of a question in lesson m1.l1" in parts[0].messages[-1].content
    first, second = (
        job.tasks.get(kind=TaskKind.ASSESSMENT, key=key).output for key in ("m1.l1", "m1.l2")
    )
    assert first is not None and second is not None
    assert first["questions"][0]["stem"] == provider.first_stem  # the earlier one stays
    assert not is_near_duplicate(second["questions"][0]["stem"], provider.first_stem)
    assert course_duplicates([("m1.l1", first), ("m1.l2", second)], topic=job.topic) == []
    assert job.course is not None
    assert job.course["modules"][0]["lessons"][1]["assessment"] == second
    ledger = GenerationAttempt.objects.filter(task__job=job, kind="part")
    assert list(ledger.values_list("part", "outcome")) == [("questions.0", "ok")]


# --- Acceptance: 30% schema-invalid replies ----------------------------------------------------
TOPICS = ("Photosynthesis", "Fractions", "Public speaking", "The water cycle")


def test_it_completes_every_course_with_valid_content_when_30_percent_of_replies_are_invalid(
    settings: Any, client_for: Any, teacher: Any, base_class: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = "invalid=0.3"

    jobs = [
        finished_job(teacher, base_class, topic=topic, num_modules=2, level=level)
        for topic, level in zip(
            TOPICS, ["beginner", "intermediate", "advanced", "beginner"], strict=True
        )
    ]

    for job in jobs:
        outline = CourseOutline.model_validate(job.outline)
        request = job.course_request
        for task in job.tasks.all():
            context = task_context(task.task_kind, task.key, request=request, outline=outline)
            outcome = validate_output(task.task_kind, task.output, request=request, context=context)
            assert outcome.ok, (task.kind, task.key, outcome.errors)
        assessments = job.tasks.filter(kind=TaskKind.ASSESSMENT).order_by("position")
        outputs = [(t.key, t.output or {}) for t in assessments]
        assert course_duplicates(outputs, topic=job.topic) == []
    attempts = GenerationAttempt.objects.filter(task__job__in=jobs)
    assert attempts.filter(outcome="invalid").count() > 0.2 * attempts.count()  # faults fired
    assert attempts.filter(kind="part").exists()  # and were repaired in place
    assert not GenerationTask.objects.filter(job__in=jobs).exclude(status=TaskStatus.SUCCEEDED)
    # The job API shows what the repairs cost, and it is what the ledger says.
    detail = client_for(teacher).get(f"/api/jobs/{jobs[0].id}/").json()
    repairs = GenerationAttempt.objects.filter(task__job=jobs[0]).filter(
        Q(kind__in=["reask", "part"]) | ~Q(outcome="ok")
    )
    spent = repairs.aggregate(total=Sum("cost_usd"))["total"]
    assert Decimal(detail["reask_cost_usd"]) == spent.quantize(Decimal("0.000001")) > 0
    assert detail["reask_share"] == pytest.approx(float(spent / jobs[0].cost_usd), rel=1e-3)
