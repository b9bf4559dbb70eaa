"""Teachers' ratings: POST/GET /api/jobs/{id}/feedback/, stored as evaluations by `human`, one
current rating per person and target, scoped to the organisation in the API and the admin."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import Membership, Role
from generation.models import CourseEvaluation, CourseGenerationJob, JobStatus
from tests.courses import finished_job
from tests.factories import BaseClassFactory, OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(teacher: Any, base_class: Any, settings: Any) -> CourseGenerationJob:
    settings.COURSEGEN_JUDGE_ENABLED = False  # ratings do not need the judge
    return finished_job(teacher, base_class)


def url(job: CourseGenerationJob) -> str:
    return f"/api/jobs/{job.pk}/feedback/"


def test_it_stores_a_course_rating_as_a_human_evaluation(
    job: CourseGenerationJob, teacher: Any, client_for: Callable[..., Any]
) -> None:
    response = client_for(teacher).post(
        url(job),
        {"rating": 4, "comment": "Clear, but lesson 2 is thin.", "flags": ["wrong_level"]},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["target"] == "course" and body["rating"] == 4 and body["task"] is None
    assert body["flags"] == ["wrong_level"] and body["rated_by"] == teacher.username
    record = CourseEvaluation.objects.get(pk=body["id"])
    assert record.evaluator == "human" and record.rated_by == teacher
    assert record.overall == 0.75 and record.criteria == {"rating": 0.75}
    assert record.feedback == ["Clear, but lesson 2 is thin."]


def test_rating_again_replaces_the_current_rating_and_keeps_the_old_one(
    job: CourseGenerationJob, teacher: Any, client_for: Callable[..., Any]
) -> None:
    client = client_for(teacher)
    first = client.post(url(job), {"rating": 2}, format="json")

    second = client.post(url(job), {"rating": 5}, format="json")

    assert first.status_code == 201 and second.status_code == 200
    ratings = CourseEvaluation.objects.filter(job=job, evaluator="human")
    assert ratings.count() == 2
    assert ratings.get(superseded_at__isnull=True).rating == 5
    assert [r["rating"] for r in client.get(url(job)).json()] == [5]


def test_a_task_has_its_own_rating_beside_the_course(
    job: CourseGenerationJob, teacher: Any, client_for: Callable[..., Any]
) -> None:
    task = job.tasks.get(kind="assessment", key="m1.l2")
    client = client_for(teacher)
    client.post(url(job), {"rating": 4}, format="json")

    response = client.post(
        url(job), {"rating": 1, "task": task.pk, "flags": ["factually_wrong"]}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["task_key"] == "m1.l2" and response.json()["target"] == "task"
    current = CourseEvaluation.objects.filter(job=job, superseded_at__isnull=True)
    assert sorted((r.task_id or 0, r.rating) for r in current if r.rated_by) == [
        (0, 4),
        (task.pk, 1),
    ]


def test_another_organisations_user_gets_404(
    job: CourseGenerationJob, client_for: Callable[..., Any], make_member: Callable[..., Any]
) -> None:
    other_org = OrganisationFactory.create()
    outsider = make_member(Role.ADMIN, org=other_org)
    client = client_for(outsider)

    assert client.post(url(job), {"rating": 1}, format="json").status_code == 404
    assert client.get(url(job)).status_code == 404
    assert not CourseEvaluation.objects.filter(evaluator="human").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "rating"),
        ({"rating": 0}, "rating"),
        ({"rating": 6}, "rating"),
        ({"rating": "great"}, "rating"),
        ({"rating": 3, "flags": ["boring"]}, "flags"),
        ({"rating": 3, "flags": ["unclear", "unclear"]}, "flags"),
        ({"rating": 3, "comment": "x" * 2001}, "comment"),
        ({"rating": 3, "task": 999999}, "task"),
        ({"rating": 3, "score": 5}, "score"),
    ],
)
def test_bad_input_gets_field_errors_and_changes_nothing(
    job: CourseGenerationJob,
    teacher: Any,
    client_for: Callable[..., Any],
    body: dict[str, Any],
    field: str,
) -> None:
    response = client_for(teacher).post(url(job), body, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not CourseEvaluation.objects.filter(evaluator="human").exists()


def test_a_task_of_another_job_is_not_accepted(
    job: CourseGenerationJob, teacher: Any, base_class: Any, client_for: Callable[..., Any]
) -> None:
    other = finished_job(teacher, base_class, topic="Glaciers").tasks.get(kind="outline")

    response = client_for(teacher).post(url(job), {"rating": 3, "task": other.pk}, format="json")

    assert response.status_code == 400 and "task" in response.json()


def test_an_unfinished_course_cannot_be_rated(
    job: CourseGenerationJob, teacher: Any, client_for: Callable[..., Any]
) -> None:
    CourseGenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)

    response = client_for(teacher).post(url(job), {"rating": 3}, format="json")

    assert response.status_code == 409
    assert "finished" in response.json()["detail"]


def test_staff_see_every_rating_and_others_their_own(
    job: CourseGenerationJob,
    teacher: Any,
    client_for: Callable[..., Any],
    make_member: Callable[..., Any],
) -> None:
    colleague = make_member(Role.TEACHER)
    student = make_member(Role.STUDENT)
    CourseGenerationJob.objects.filter(pk=job.pk).update(owner=student)
    for user, rating in ((teacher, 4), (colleague, 2), (student, 5)):
        assert client_for(user).post(url(job), {"rating": rating}, format="json").status_code == 201

    assert sorted(r["rating"] for r in client_for(colleague).get(url(job)).json()) == [2, 4, 5]
    assert [r["rating"] for r in client_for(student).get(url(job)).json()] == [5]


def test_the_admin_shows_ratings_to_the_owners_organisation_staff_only(
    job: CourseGenerationJob, teacher: Any, client_for: Callable[..., Any]
) -> None:
    client_for(teacher).post(url(job), {"rating": 2, "comment": "Too hard"}, format="json")
    users = get_user_model()
    member = users.objects.create_user("member-staff", password="pw", is_staff=True)
    outsider = users.objects.create_user("outside-staff", password="pw", is_staff=True)
    perms = Permission.objects.filter(codename__in=["view_courseevaluation"])
    for user in (member, outsider):
        user.user_permissions.set(perms)
    Membership.objects.create(user=member, organisation=job.organisation, role=Role.ADMIN)
    Membership.objects.create(
        user=outsider, organisation=BaseClassFactory.create().organisation, role=Role.ADMIN
    )

    def page(user: Any) -> str:
        client = Client()
        client.force_login(user)
        response = client.get("/admin/generation/courseevaluation/?evaluator=human")
        assert response.status_code == 200
        return response.content.decode()

    assert teacher.username in page(member)
    assert teacher.username not in page(outsider)


def test_the_dashboard_shows_teachers_judge_and_heuristic_side_by_side(
    teacher: Any, base_class: Any, client_for: Callable[..., Any], settings: Any
) -> None:
    settings.COURSEGEN_JUDGE_ENABLED = True
    judged = finished_job(teacher, base_class, topic="Tides and the moon")
    judged.refresh_from_db()
    client_for(teacher).post(url(judged), {"rating": 1}, format="json")  # the teacher disagrees
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)

    html = client.get("/admin/").content.decode()

    row = re.search(r'<tr class="course-scores-row">(.*?)</tr>', html, re.DOTALL)
    assert row is not None and "Tides and the moon" in row.group(1)
    cells = re.findall(r"<td>([^<]*)</td>", row.group(1))
    assert cells == ["0.00", "1", f"{judged.judge_score:.2f}", f"{judged.quality_score:.2f}"]
    agreement = dict(
        re.findall(r'<tr class="agreement-row"><td>([a-z ]+)</td><td>(\d+)</td>', html)
    )
    assert agreement == {
        "human vs judge": "1",
        "human vs heuristic": "1",
        "judge vs heuristic": "1",
    }
    assert "0% (0/1)" in html  # the teacher's 1/5 fails; the judge passed the course
