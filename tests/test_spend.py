"""Spend control (issue 21): admission weighs paid work by its size, and regenerations and
resumes pass admission with their own per-role limits, on both admission paths, in time and
under concurrent bursts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from accounts.models import BaseClass, Role
from coursegen import db
from generation import services
from generation.models import (
    AttemptKind,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    TaskStatus,
)
from generation.schemas import CourseRequest, TaskKind
from ratelimits.models import Admission, AdmissionKind, RateLimitPolicy, Window
from tests.concurrency import run_together
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SMALL = {"topic": "Weighed fractions", "num_modules": 1, "lessons_per_module": 1}  # 7 tasks


@pytest.fixture(params=["sql", "orm"])
def admission_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "orm":
        monkeypatch.setattr(db, "hand_written_sql", lambda: False)
    return str(request.param)


@pytest.fixture
def nothing_starts(settings: Any) -> None:
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 0


@pytest.fixture(autouse=True)
def no_judge(settings: Any) -> None:
    # The judge's own calls are bounded per job, not per user: out of these counts.
    settings.COURSEGEN_JUDGE_ENABLED = False


def _policy(role: Role, **fields: int) -> None:
    RateLimitPolicy.objects.filter(role=role).update(**fields)


def _submit(client: APIClient, base_class: BaseClass, **body: Any) -> Any:
    return client.post(
        "/api/jobs/", {"base_class": str(base_class.pk), **SMALL, **body}, format="json"
    )


def _regenerate(client: APIClient, task: GenerationTask) -> Any:
    url = f"/api/jobs/{task.job_id}/tasks/{task.pk}/regenerate/"
    return client.post(url, {"instruction": ""}, format="json")


def _fail(job: CourseGenerationJob, *, outline: bool = False) -> GenerationTask:
    """Mark a job failed with one failed task (its outline, or a lesson section)."""
    kind = TaskKind.OUTLINE if outline else TaskKind.LESSON_SECTION
    task = job.tasks.filter(kind=kind).first()
    assert task is not None
    GenerationTask.objects.filter(pk=task.pk).update(status=TaskStatus.FAILED, error="boom")
    CourseGenerationJob.objects.filter(pk=job.pk).update(
        status=JobStatus.FAILED, finished_at=timezone.now()
    )
    return task


# --- A job's size ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("modules", "lessons"), [(1, 1), (4, 3), (12, 10)])
def test_it_counts_a_course_by_the_tasks_its_plan_runs(modules: int, lessons: int) -> None:
    request = CourseRequest(topic="Sizes", num_modules=modules, lessons_per_module=lessons)
    outline: Any = type("O", (), {"modules": [type("M", (), {"lessons": [0] * lessons})] * modules})

    assert request.task_count == 1 + len(services.plan_units(outline))
    assert CourseRequest(topic="Default size").task_count == 43


def test_it_weighs_a_job_by_its_size_against_the_task_budget(
    admission_path: str,
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    nothing_starts: None,
) -> None:
    teacher = make_member(Role.TEACHER)
    _policy(Role.TEACHER, tasks_per_hour=50, max_concurrent=10)
    client = client_for(teacher)
    with time_machine.travel(T0, tick=False) as clock:
        assert _submit(client, base_class, num_modules=2, lessons_per_module=3).status_code == 201
        clock.shift(timedelta(minutes=10))  # 23 tasks so far
        assert _submit(client, base_class, num_modules=2, lessons_per_module=2).status_code == 201
        clock.shift(timedelta(minutes=10))  # 23 + 17 = 40

        refused = _submit(client, base_class, num_modules=1, lessons_per_module=3)  # 13 tasks

        assert refused.status_code == 429
        body = refused.json()
        assert (body["window"], body["limit"], body["used"], body["requested"]) == (
            Window.TASKS_HOUR,
            50,
            40,
            13,
        )
        # 3 tasks must leave the hour: the first job's 23 do at T0 + 1 h.
        assert parse_datetime(body["reset_at"]) == T0 + timedelta(hours=1)
        assert refused["Retry-After"] == str(40 * 60)
        assert "this request is 13 and 40 are used" in body["detail"]
        assert _submit(client, base_class).status_code == 201  # 7 tasks still fit: 47
        clock.shift(timedelta(minutes=40))
        assert _submit(client, base_class, num_modules=1, lessons_per_module=3).status_code == 201
    assert sorted(Admission.objects.filter(user=teacher).values_list("units", flat=True)) == [
        7,
        13,
        17,
        23,
    ]


def test_it_refuses_a_job_larger_than_a_whole_window_with_a_400(
    client_for: Any, make_member: Any, base_class: BaseClass
) -> None:
    student = make_member(Role.STUDENT)
    _policy(Role.STUDENT, tasks_per_hour=300)

    response = _submit(client_for(student), base_class, num_modules=12, lessons_per_module=10)

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["window"], body["limit"], body["requested"]) == (
        "request_too_large",
        Window.TASKS_HOUR,
        300,
        375,
    )
    assert not CourseGenerationJob.objects.filter(owner=student).exists()


def test_it_admits_a_default_course_as_before(
    client_for: Any, make_member: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    teacher = make_member(Role.TEACHER)
    _policy(Role.TEACHER, max_concurrent=100)
    client = client_for(teacher)

    codes = [_submit(client, base_class, num_modules=4, lessons_per_module=3).status_code]
    codes += [_submit(client, base_class, num_modules=4, lessons_per_module=3).status_code]

    assert codes == [201, 201]
    usage = {w["window"]: w for w in client.get("/api/user/rate-limits").json()["limits"]}
    assert (usage["tasks_hour"]["used"], usage["tasks_hour"]["limit"]) == (86, 1290)


# --- Regenerations --------------------------------------------------------------------------------
def test_it_limits_regenerations_per_hour_and_counts_them_as_tasks(
    admission_path: str, client_for: Any, make_member: Any, base_class: BaseClass
) -> None:
    student = make_member(Role.STUDENT)
    _policy(Role.STUDENT, regenerations_per_hour=2)
    job = finished_job(student, base_class)
    tasks = list(job.tasks.exclude(kind=TaskKind.OUTLINE).order_by("position"))
    client = client_for(student)

    codes = [_regenerate(client, task).status_code for task in tasks[:3]]

    assert codes == [202, 202, 429]
    refused = _regenerate(client, tasks[3]).json()
    assert (refused["window"], refused["limit"], refused["used"]) == (
        Window.REGENERATIONS_HOUR,
        2,
        2,
    )
    kinds = Counter(Admission.objects.filter(user=student).values_list("kind", flat=True))
    assert kinds == {AdmissionKind.JOB: 1, AdmissionKind.REGENERATION: 2}
    usage = {w["window"]: w for w in client.get("/api/user/rate-limits").json()["limits"]}
    assert usage["tasks_hour"]["used"] == job.course_request.task_count + 2


def test_it_refuses_a_regeneration_over_the_task_budget(
    client_for: Any, make_member: Any, base_class: BaseClass
) -> None:
    student = make_member(Role.STUDENT)
    job = finished_job(student, base_class)  # a 1x2 course: 10 tasks
    _policy(Role.STUDENT, tasks_per_hour=11)
    task = job.tasks.filter(kind=TaskKind.METADATA).get()
    client = client_for(student)

    assert _regenerate(client, task).status_code == 202
    refused = _regenerate(client, task)

    assert refused.status_code == 429
    assert (refused.json()["window"], refused.json()["used"]) == (Window.TASKS_HOUR, 11)


def test_it_leaves_a_platform_operator_outside_role_limits_in_the_admin(
    admin_client: Any, make_member: Any, base_class: BaseClass
) -> None:
    student = make_member(Role.STUDENT)
    job = finished_job(student, base_class)
    _policy(Role.STUDENT, regenerations_per_hour=1)
    task = job.tasks.filter(kind=TaskKind.METADATA).get()

    response = admin_client.post(
        "/admin/generation/generationtask/",
        {"action": "regenerate_tasks", "_selected_action": [task.pk]},
    )

    assert response.status_code == 302
    assert task.versions.count() == 2
    assert not Admission.objects.filter(kind=AdmissionKind.REGENERATION).exists()


# --- Resumes --------------------------------------------------------------------------------------
def test_it_checks_the_concurrent_limit_when_resuming(
    admission_path: str,
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    nothing_starts: None,
) -> None:
    student = make_member(Role.STUDENT)
    client = client_for(student)
    assert _submit(client, base_class).status_code == 201
    failed = CourseGenerationJob.objects.get(owner=student)
    _fail(failed, outline=True)
    assert _submit(client, base_class).status_code == 201  # the failed job freed its slot

    refused = client.post(f"/api/jobs/{failed.pk}/resume/")

    assert refused.status_code == 429
    assert refused.json()["window"] == Window.CONCURRENT
    failed.refresh_from_db()
    assert failed.status == JobStatus.FAILED  # nothing changed


def test_a_resume_by_another_member_takes_the_owners_slot_not_theirs(
    admission_path: str,
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    nothing_starts: None,
) -> None:
    # A teacher resumed a student's failed job while the student's one slot was taken: the
    # check counted the teacher's unfinished jobs, not the owner's (found in review).
    student, teacher = make_member(Role.STUDENT), make_member(Role.TEACHER)
    _policy(Role.TEACHER, max_concurrent=1)
    assert _submit(client_for(student), base_class).status_code == 201
    failed = CourseGenerationJob.objects.get(owner=student)
    _fail(failed, outline=True)
    assert _submit(client_for(student), base_class).status_code == 201  # the student's one slot
    teacher_client = client_for(teacher)
    assert _submit(teacher_client, base_class).status_code == 201  # the teacher's one slot

    refused = teacher_client.post(f"/api/jobs/{failed.pk}/resume/")

    assert refused.status_code == 429, refused.json()
    assert refused.json()["window"] == Window.CONCURRENT and refused.json()["role"] == "student"
    failed.refresh_from_db()
    assert failed.status == JobStatus.FAILED
    assert not Admission.objects.filter(kind=AdmissionKind.RESUME).exists()  # rolled back

    # The student's other job ends: the teacher's resume takes the student's slot, and their
    # own full slot does not refuse it; the teacher's resume budget pays.
    CourseGenerationJob.objects.filter(owner=student).exclude(pk=failed.pk).update(
        status=JobStatus.CANCELLED
    )
    resumed = teacher_client.post(f"/api/jobs/{failed.pk}/resume/")

    assert resumed.status_code == 200, resumed.json()
    assert Admission.objects.get(kind=AdmissionKind.RESUME).user == teacher


def test_it_limits_resumes_per_hour_and_weighs_them_by_their_tasks(
    admission_path: str,
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    nothing_starts: None,
) -> None:
    teacher = make_member(Role.TEACHER)
    _policy(Role.TEACHER, resumes_per_hour=1)
    client = client_for(teacher)
    jobs = []
    for _ in range(2):
        assert _submit(client, base_class).status_code == 201
    jobs = list(CourseGenerationJob.objects.filter(owner=teacher))
    for job in jobs:
        _fail(job, outline=True)

    first = client.post(f"/api/jobs/{jobs[0].pk}/resume/")
    second = client.post(f"/api/jobs/{jobs[1].pk}/resume/")

    assert first.status_code == 200, first.json()
    assert second.status_code == 429
    assert second.json()["window"] == Window.RESUMES_HOUR
    resume = Admission.objects.get(user=teacher, kind=AdmissionKind.RESUME)
    assert resume.units == 7  # a failed outline plans the whole 1x1 course again


def test_it_lets_a_student_make_no_more_paid_task_runs_per_hour_than_the_role_allows(
    client_for: Any, make_member: Any, base_class: BaseClass, settings: Any
) -> None:
    """Acceptance: by every endpoint that starts paid work, the paid task runs (provider calls
    for a task: a first call or a regeneration) in an hour stay within the role's budget."""
    settings.COURSEGEN_CACHE_ENABLED = False  # every admitted task is a provider call
    budget = 30
    _policy(
        Role.STUDENT,
        per_minute=100,
        per_hour=100,
        tasks_per_hour=budget,
        regenerations_per_hour=100,
        resumes_per_hour=100,
    )
    student = make_member(Role.STUDENT)
    client = client_for(student)
    results: Counter[str] = Counter()
    for _ in range(6):  # submits: 7 tasks each
        results[f"submit {_submit(client, base_class).status_code}"] += 1
    job = CourseGenerationJob.objects.filter(owner=student, status=JobStatus.SUCCEEDED).first()
    assert job is not None
    task = job.tasks.get(kind=TaskKind.METADATA)
    for _ in range(4):  # regenerations: 1 each
        results[f"regenerate {_regenerate(client, task).status_code}"] += 1
    failed = _fail(job)
    for _ in range(2):  # resumes: their failed tasks
        response = client.post(f"/api/jobs/{job.pk}/tasks/{failed.pk}/retry/")
        results[f"retry {response.status_code}"] += 1

    paid_runs = GenerationAttempt.objects.filter(
        task__job__owner=student, kind__in=[AttemptKind.FIRST, AttemptKind.PART]
    ).count()
    assert results == {
        "submit 201": 4,  # 28 tasks
        "submit 429": 2,
        "regenerate 202": 2,  # 30
        "regenerate 429": 2,
        "retry 429": 2,
    }
    assert paid_runs <= budget
    assert paid_runs == 30


# --- Concurrent bursts ----------------------------------------------------------------------------
BURST = 30


def _calls(user: Any, call: Callable[[APIClient], Any]) -> list[Callable[[], int]]:
    def one() -> int:
        client = APIClient()
        client.force_authenticate(user=user)
        return int(call(client).status_code)

    return [one for _ in range(BURST)]


@pytest.fixture
def regenerations_not_sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Admission is what is measured: the requests stay open instead of running in-request.
    monkeypatch.setattr("generation.regeneration.regeneration_send", lambda **_: None)
    yield


def test_it_admits_exactly_the_task_budget_of_a_burst_of_submits(
    make_member: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    teacher = make_member(Role.TEACHER)
    _policy(Role.TEACHER, per_minute=BURST, max_concurrent=BURST, tasks_per_hour=100)

    codes = run_together(_calls(teacher, lambda c: _submit(c, base_class)))

    assert Counter(codes) == {201: 14, 429: BURST - 14}  # 14 x 7 = 98 tasks of 100
    assert CourseGenerationJob.objects.filter(owner=teacher).count() == 14


def test_it_admits_exactly_the_regeneration_limit_of_a_burst(
    make_member: Any, base_class: BaseClass, regenerations_not_sent: None
) -> None:
    student = make_member(Role.STUDENT)
    job = finished_job(student, base_class, num_modules=3, lessons_per_module=3)  # 33 tasks
    tasks = list(job.tasks.exclude(kind=TaskKind.OUTLINE).order_by("position")[:BURST])
    calls = []
    for task in tasks:  # one per task: a task has one open regeneration at a time

        def one(task: GenerationTask = task) -> int:
            client = APIClient()
            client.force_authenticate(user=student)
            return int(_regenerate(client, task).status_code)

        calls.append(one)

    codes = run_together(calls)

    assert Counter(codes) == {202: 10, 429: BURST - 10}  # the student's 10 per hour
    assert Admission.objects.filter(user=student, kind=AdmissionKind.REGENERATION).count() == 10


def test_it_resumes_exactly_one_of_a_burst_of_resumes_for_a_student(
    make_member: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    student = make_member(Role.STUDENT)
    _policy(Role.STUDENT, max_concurrent=5, per_minute=5)
    for _ in range(5):
        job = services.job_submit(
            user=student, base_class=base_class, request=CourseRequest(**SMALL)
        )
        _fail(job, outline=True)
    _policy(Role.STUDENT, max_concurrent=1)
    jobs = list(CourseGenerationJob.objects.filter(owner=student))
    calls = []
    for job in jobs:

        def one(job: CourseGenerationJob = job) -> int:
            client = APIClient()
            client.force_authenticate(user=student)
            return int(client.post(f"/api/jobs/{job.pk}/resume/").status_code)

        calls.append(one)

    codes = run_together(calls)

    assert Counter(codes) == {200: 1, 429: 4}
    assert CourseGenerationJob.objects.filter(owner=student, status=JobStatus.QUEUED).count() == 1
