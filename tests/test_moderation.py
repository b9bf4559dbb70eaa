"""Content safety for schools (docs/safety.md): requests are moderated at submit, each task's
output after validation; flagged output is asked for once more with the category as feedback,
then held for staff, who release or reject it in the admin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from accounts.models import Role
from generation import services
from generation.models import (
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    JobStatus,
)
from generation.providers import (
    ModerationRequest,
    ModerationResult,
    TransientProviderError,
)
from generation.providers.base import Completion, CompletionRequest
from generation.providers.offline import OfflineProvider
from generation.providers.offline.faults import FaultRates, make_unsafe
from generation.providers.offline.moderation import UNSAFE_SENTENCE
from generation.rubric import JUDGE_EVALUATOR
from generation.schemas import CourseRequest, TaskKind
from monitoring.logs import flush_all
from monitoring.models import Alert, CourseGenerationLog
from ratelimits.models import Admission
from tests.courses import DuplicatingProvider, UnsafeProvider, finished_job

pytestmark = pytest.mark.django_db(transaction=True)

VALID = {"topic": "Photosynthesis", "num_modules": 1, "lessons_per_module": 2}


@pytest.fixture
def unsafe(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[UnsafeProvider]:
    # The LLM judge would regenerate the held lesson (moderated again): not what is tested here.
    settings.COURSEGEN_JUDGE_ENABLED = False
    provider = UnsafeProvider(always={"lesson_section m1.l1"}, first_only={"assessment m1.l2"})
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)
    monkeypatch.setattr("generation.regeneration.get_provider", lambda: provider)
    yield provider


def _submit(client: Any, base_class: Any, **body: Any) -> Any:
    payload = {"base_class": str(base_class.pk), **VALID, **body}
    return client.post("/api/jobs/", payload, format="json")


# --- Requests ------------------------------------------------------------------------------------
def test_it_refuses_a_flagged_request_naming_the_category_and_creates_nothing(
    client_for: Any, make_member: Any, base_class: Any
) -> None:
    student = make_member(Role.STUDENT)

    response = _submit(client_for(student), base_class, topic="How to make a pipe bomb at home")

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "content_flagged"
    assert body["categories"] == ["dangerous"] and body["flagged_fields"] == ["topic"]
    assert "dangerous" in body["detail"]
    assert not CourseGenerationJob.objects.exists()
    assert not Admission.objects.filter(user=student).exists()  # no admission slot spent
    flush_all()
    log = CourseGenerationLog.objects.get(event="moderation.request_flagged")
    assert log.user_id == student.pk and log.data["categories"] == ["dangerous"]
    alert = Alert.objects.get(kind="content_flagged")
    _submit(client_for(student), base_class, instructions="Add racist jokes to tell in class")
    alert.refresh_from_db()
    assert alert.count == 2  # refusals are counted


def test_it_admits_a_sensitive_but_legitimate_topic_and_puts_its_moderation_in_the_ledger(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    response = _submit(client_for(teacher), base_class, topic="History of the Holocaust")

    assert response.status_code == 201, response.json()
    job = CourseGenerationJob.objects.get()
    outline = job.tasks.get(kind=TaskKind.OUTLINE)
    first = GenerationAttempt.objects.get(task=outline, number=1)
    assert (first.kind, first.outcome, first.cost_usd) == ("moderation", "ok", 0)
    assert first.model == "offline-moderation-simulator"
    assert GenerationAttempt.objects.filter(task=outline).count() == outline.attempts == 3


def test_it_answers_503_and_admits_nothing_when_moderation_is_unavailable(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any, settings: Any
) -> None:
    settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS = 2
    settings.COURSEGEN_TRANSIENT_BASE_WAIT_S = 0.0
    calls = []

    def down(self: Any, request: ModerationRequest) -> ModerationResult:
        calls.append(request)
        raise TransientProviderError("simulated 503", status_code=503)

    monkeypatch.setattr(OfflineProvider, "moderate", down)

    response = _submit(client_for(teacher), base_class)

    assert response.status_code == 503 and response.json()["code"] == "moderation_unavailable"
    assert len(calls) == 2  # the one retry policy
    assert not CourseGenerationJob.objects.exists()


def test_it_refuses_a_flagged_regeneration_instruction(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    task = job.tasks.get(kind=TaskKind.BRAIN_BYTES, key="m1.l1")

    response = client_for(teacher).post(
        f"/api/jobs/{job.id}/tasks/{task.pk}/regenerate/",
        {"instruction": "Explain how to kill someone and not get caught"},
        format="json",
    )

    assert response.status_code == 422 and response.json()["categories"] == ["violence"]
    assert not task.versions.exists()


# --- Generated output ----------------------------------------------------------------------------
def test_it_regenerates_flagged_output_once_with_the_category_then_holds_it(
    teacher: Any, base_class: Any, unsafe: UnsafeProvider
) -> None:
    job = finished_job(teacher, base_class)

    assert job.status == JobStatus.SUCCEEDED
    held = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l1")
    assert (held.moderation, held.moderation_categories) == ("held", ["dangerous"])
    ledger = list(held.attempt_rows.values_list("kind", "outcome"))
    assert ledger == [
        ("first", "ok"),
        ("moderation", "flagged"),
        ("reask", "ok"),
        ("moderation", "flagged"),
    ]
    sections = [r for r in unsafe.requests if r.task_kind is TaskKind.LESSON_SECTION]
    reask = [r for r in sections if r.context.get("task_key") == "m1.l1"][-1]
    assert "flagged this output as unsuitable for school students (dangerous)" in (
        reask.messages[-1].content
    )
    fixed = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l2")
    assert fixed.moderation == "passed" and UNSAFE_SENTENCE not in str(fixed.output)
    # held output stays out of the course, which says what is held
    assert job.course is not None
    assert job.course["modules"][0]["lessons"][0]["section"] == {}
    assert job.course["held"] == [
        {"kind": "lesson_section", "key": "m1.l1", "status": "held", "categories": ["dangerous"]}
    ]
    assert UNSAFE_SENTENCE not in str(job.course)
    assert Alert.objects.filter(kind="content_flagged", subject=f"job:{job.id}").exists()


def test_it_refuses_exports_and_marks_the_page_while_content_is_held(
    client: Any, client_for: Any, teacher: Any, base_class: Any, unsafe: UnsafeProvider
) -> None:
    job = finished_job(teacher, base_class)

    export = client_for(teacher).get(f"/api/jobs/{job.id}/export/md/")
    detail = client_for(teacher).get(f"/api/jobs/{job.id}/").json()
    client.force_login(teacher)
    page = client.get(f"/courses/{job.id}/").content.decode()

    assert export.status_code == 409 and export.json()["code"] == "content_held"
    assert export.json()["held"] == ["lesson_section m1.l1"]
    held = [t for t in detail["tasks"] if t["moderation"] == "held"]
    assert [(t["key"], t["moderation_categories"]) for t in held] == [("m1.l1", ["dangerous"])]
    assert "Held for review" in page and 'id="downloads"' not in page
    assert UNSAFE_SENTENCE not in page


def test_the_regenerate_answer_leaves_held_output_out(
    client_for: Any,
    teacher: Any,
    base_class: Any,
    unsafe: UnsafeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a real worker the 202 comes before the new version exists: the answer describes the
    # task as it is, held. It carried the held text (found in review).
    job = finished_job(teacher, base_class)
    held = job.tasks.get(moderation="held")
    clean = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l2")
    queued: list[int] = []
    monkeypatch.setattr(
        "generation.regeneration.task_regenerate_enqueue",
        lambda *, task_id, **kwargs: queued.append(task_id),
    )
    client = client_for(teacher)

    answer = client.post(f"/api/jobs/{job.id}/tasks/{held.pk}/regenerate/", {}, format="json")
    answered_clean = client.post(
        f"/api/jobs/{job.id}/tasks/{clean.pk}/regenerate/", {}, format="json"
    )

    assert answer.status_code == 202 and queued == [held.pk, clean.pk]
    assert answer.json()["moderation"] == "held" and answer.json()["output"] is None
    assert UNSAFE_SENTENCE not in answer.content.decode()
    assert held.output and UNSAFE_SENTENCE in str(held.output)  # the row keeps it for staff
    assert answered_clean.json()["output"] == clean.output


def test_evaluations_leave_out_what_quotes_a_lesson_with_withheld_content(
    client_for: Any, teacher: Any, base_class: Any, settings: Any
) -> None:
    # Evaluations quote lessons: the judge's verdict its evidence, the heuristic's lines a
    # repeated question's stem (found in review). Here staff rejected lesson 1's questions after
    # the judge had scored it.
    settings.COURSEGEN_JUDGE_ENABLED = True
    job = finished_job(teacher, base_class)
    rejected = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l1")
    rejected.moderation = "rejected"
    rejected.save(update_fields=["moderation"])
    assert rejected.output is not None
    stem = rejected.output["questions"][0]["stem"]
    quoting = f'lesson m1.l2 question 1 repeats lesson m1.l1: "{stem}"'
    CourseEvaluation.objects.create(
        job=job,
        evaluator="heuristic-v1",
        overall=0.9,
        criteria={},
        feedback=[quoting, "questions reach 2 Bloom level(s); aim for 3 or more"],
        details={"made_by": "this test"},
    )

    body = client_for(teacher).get(f"/api/jobs/{job.id}/evaluations/").json()

    lessons = [e for e in body if e["evaluator"] == JUDGE_EVALUATOR and e["task"] is not None]
    assert {e["task_key"] for e in lessons} == {"m1.l1", "m1.l2"}
    for evaluation in lessons:
        withheld = evaluation["task_key"] == "m1.l1"
        assert ("verdict" not in evaluation["details"]) is withheld
        assert evaluation["details"].get("withheld", False) is withheld
        assert evaluation["overall"] is not None  # the scores stay
        if withheld:
            assert evaluation["feedback"] == []
    heuristic = next(e for e in body if e["details"].get("made_by") == "this test")
    assert heuristic["feedback"] == ["questions reach 2 Bloom level(s); aim for 3 or more"]
    assert heuristic["details"]["withheld_lessons"] == ["m1.l1"]
    assert stem not in json.dumps(body)
    section = job.tasks.get(kind=TaskKind.LESSON_SECTION, key="m1.l1")
    stored = CourseEvaluation.objects.filter(task=section, evaluator=JUDGE_EVALUATOR)
    assert stored and all(e.details["verdict"] for e in stored)  # kept whole for staff


def test_it_lets_only_staff_with_the_review_permission_release_held_content(
    client: Any,
    client_for: Any,
    admin_user: Any,
    teacher: Any,
    base_class: Any,
    django_user_model: Any,
    unsafe: UnsafeProvider,
) -> None:
    job = finished_job(teacher, base_class)
    held = job.tasks.get(moderation="held")
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_heldcontent"))
    action = {"action": "release", "_selected_action": [held.pk]}

    client.force_login(viewer)
    listing = client.get("/admin/generation/heldcontent/")
    client.post("/admin/generation/heldcontent/", action)

    assert listing.status_code == 200 and "dangerous" in listing.content.decode()
    assert 'value="release"' not in listing.content.decode()  # no permission, no action
    held.refresh_from_db()
    assert held.moderation == "held"

    client.force_login(admin_user)
    response = client.post("/admin/generation/heldcontent/", action)

    assert response.status_code == 302
    held.refresh_from_db()
    job.refresh_from_db()
    assert (held.moderation, held.moderation_reviewed_by) == ("released", admin_user)
    assert job.course is not None and "held" in job.course and job.course["held"] == []
    assert job.course["modules"][0]["lessons"][0]["section"] == held.output
    assert client_for(teacher).get(f"/api/jobs/{job.id}/export/md/").status_code == 200


def test_it_rejects_held_content_and_publishes_a_clean_regenerated_version(
    client: Any,
    client_for: Any,
    admin_user: Any,
    teacher: Any,
    base_class: Any,
    unsafe: UnsafeProvider,
) -> None:
    job = finished_job(teacher, base_class)
    held = job.tasks.get(moderation="held")
    client.force_login(admin_user)

    client.post(
        "/admin/generation/heldcontent/", {"action": "reject", "_selected_action": [held.pk]}
    )

    held.refresh_from_db()
    job.refresh_from_db()
    assert job.course is not None
    assert held.moderation == "rejected" and job.course["held"][0]["status"] == "rejected"
    assert client_for(teacher).get(f"/api/jobs/{job.id}/export/md/").status_code == 409

    unsafe.always = set()  # the model now writes a clean version
    response = client_for(teacher).post(
        f"/api/jobs/{job.id}/tasks/{held.pk}/regenerate/", {}, format="json"
    )

    assert response.status_code == 202
    held.refresh_from_db()
    job.refresh_from_db()
    assert job.course is not None
    assert held.moderation == "passed" and job.course["held"] == []
    assert client_for(teacher).get(f"/api/jobs/{job.id}/export/md/").status_code == 200


def test_it_fails_the_job_when_the_outline_is_flagged_twice(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    provider = UnsafeProvider(always={"outline course"})
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)

    request = CourseRequest(topic="Rivers", num_modules=1, lessons_per_module=1)
    job = services.job_submit(user=teacher, base_class=base_class, request=request)

    job.refresh_from_db()
    outline = job.tasks.get(kind=TaskKind.OUTLINE)
    assert job.status == JobStatus.FAILED and outline.output is None
    assert outline.error == "the outline was flagged by moderation (dangerous)"
    assert job.tasks.count() == 1  # nothing was planned from it


# --- The simulator's fault ---------------------------------------------------------------------
def test_it_parses_the_unsafe_fault_and_keeps_the_content_schema_valid() -> None:
    assert FaultRates.parse("unsafe=0.2").unsafe == 0.2
    data = {"title": "Rivers", "body": "A long text about rivers and valleys."}
    unsafe = make_unsafe(data, UNSAFE_SENTENCE)
    assert unsafe["body"].endswith(UNSAFE_SENTENCE) and unsafe["title"] == "Rivers"
    assert data["body"] == "A long text about rivers and valleys."  # a copy


def test_it_refuses_a_flagged_request_from_the_generate_course_command(
    teacher: Any, base_class: Any
) -> None:
    with pytest.raises(CommandError, match="dangerous"):
        call_command(
            "generate_course", "--user", teacher.username, "--topic", "How to make a pipe bomb"
        )
    assert not CourseGenerationJob.objects.exists()


class _UnsafeReplacement(DuplicatingProvider):
    """Lesson 2 repeats lesson 1's first question; its replacement question is flagged."""

    def complete(self, request: CompletionRequest) -> Completion:
        completion = super().complete(request)
        if request.task_kind is TaskKind.ASSESSMENT and request.context.get("part"):
            data = make_unsafe(completion.data, UNSAFE_SENTENCE)
            return Completion(**{**completion.__dict__, "data": data})
        return completion


def test_a_flagged_replacement_question_holds_its_task(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    # The finalize's question de-duplication merged a replacement that moderation had flagged
    # and left the task "passed": published in the course and its exports (found in review).
    settings.COURSEGEN_JUDGE_ENABLED = False
    provider = _UnsafeReplacement()
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)
    monkeypatch.setattr("generation.services.dedupe.get_provider", lambda: provider)

    job = finished_job(teacher, base_class)

    task = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l2")
    assert GenerationAttempt.objects.filter(task=task, kind="moderation", outcome="flagged")
    assert task.moderation == "held" and UNSAFE_SENTENCE in str(task.output)
    client = client_for(teacher)
    assert UNSAFE_SENTENCE not in client.get(f"/api/jobs/{job.id}/course/").content.decode()
    assert client.get(f"/api/jobs/{job.id}/export/md/").status_code == 409
    flush_all()
    assert Alert.objects.filter(subject=f"job:{job.pk}").exists()
