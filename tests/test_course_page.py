"""The course page (/courses/<id>/) and the export endpoint: who may see them, and what they say.

Same visibility as the rest of the API: the organisation's teachers and admins, a student for
their own job; staff who may view jobs in the admin. Anyone else gets 404, for the page and for
every export format.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils.html import escape

from accounts.models import Role
from accounts.services import organisation_admin_make
from generation.exports import FORMATS
from generation.exports.text import file_stem
from generation.models import CourseGenerationJob, JobStatus
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog
from tests.courses import finished_job
from tests.factories import BaseClassFactory, OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)

EXPORT_TYPES = {
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "qti": "application/zip",
    "scorm": "application/zip",
}


@pytest.fixture
def student(make_member: Callable[..., Any]) -> Any:
    return make_member(Role.STUDENT)


@pytest.fixture
def students_job(student: Any, base_class: Any) -> CourseGenerationJob:
    return finished_job(student, base_class)


def _doc(job: CourseGenerationJob) -> dict[str, Any]:
    assert job.course is not None
    return job.course


def _page(user: Any, job: CourseGenerationJob) -> Any:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client.get(f"/courses/{job.pk}/")


def _export(user: Any, job: CourseGenerationJob, name: str) -> Any:
    client = Client()
    client.force_login(user)
    return client.get(f"/api/jobs/{job.pk}/export/{name}/")


def test_it_shows_the_course_page_to_the_owner_and_the_organisations_teachers(
    students_job: CourseGenerationJob, student: Any, teacher: Any
) -> None:
    for user in (student, teacher):
        response = _page(user, students_job)
        assert response.status_code == 200
        html = response.content.decode()
        assert f'<h1 id="course-title">{escape(_doc(students_job)["title"])}</h1>' in html
        for module in _doc(students_job)["modules"]:
            for lesson in module["lessons"]:
                assert f'id="m{module["position"]}-l{lesson["position"]}"' in html
        assert '<svg id="mind-map"' in html
        for name in FORMATS:
            assert f'href="/api/jobs/{students_job.pk}/export/{name}/"' in html


@pytest.mark.parametrize("target", ["page", *FORMATS])
def test_it_answers_404_to_other_organisations_and_to_another_student(
    target: str,
    students_job: CourseGenerationJob,
    make_member: Callable[..., Any],
) -> None:
    other_org = OrganisationFactory.create()
    strangers = [
        make_member(Role.STUDENT),  # same organisation, another student's job
        make_member(Role.TEACHER, org=other_org),
        make_member(Role.ADMIN, org=other_org),
        get_user_model().objects.create_user("staff-without-permission", is_staff=True),
    ]
    for stranger in strangers:
        if target == "page":
            response = _page(stranger, students_job)
        else:
            response = _export(stranger, students_job, target)
        assert response.status_code == 404, (stranger, target)
        assert _doc(students_job)["title"].encode() not in response.content


def test_it_sends_anonymous_visitors_to_the_login_page(students_job: CourseGenerationJob) -> None:
    response = _page(None, students_job)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/courses/{students_job.pk}/"
    assert Client().get(f"/api/jobs/{students_job.pk}/export/md/").status_code in (401, 403)
    login = Client().get("/accounts/login/")
    assert login.status_code == 200 and b'name="password"' in login.content


def test_an_organisation_administrator_opens_courses_of_an_organisation_they_teach_in(
    students_job: CourseGenerationJob, teacher: Any, client_for: Any
) -> None:
    # Staff scoping found no job outside the organisations they administer and stopped there,
    # while the API listed this job with its page and export links (found in review).
    elsewhere = OrganisationFactory.create()
    organisation_admin_make(user=teacher, organisation=elsewhere)
    teacher = get_user_model().objects.get(pk=teacher.pk)
    assert teacher.has_perm("generation.view_coursegenerationjob")
    assert client_for(teacher).get(f"/api/jobs/{students_job.pk}/").status_code == 200

    assert _page(teacher, students_job).status_code == 200
    assert _export(teacher, students_job, "md").status_code == 200
    stranger = OrganisationFactory.create()
    outsider = organisation_admin_make(
        user=get_user_model().objects.create_user("outsider"), organisation=stranger
    )
    assert _page(outsider, students_job).status_code == 404


def test_an_export_answers_a_client_that_accepts_only_the_files_type(
    students_job: CourseGenerationJob, teacher: Any
) -> None:
    for name in FORMATS:
        content_type = _export(teacher, students_job, name)["Content-Type"]
        client = Client()
        client.force_login(teacher)

        response = client.get(
            f"/api/jobs/{students_job.pk}/export/{name}/", headers={"Accept": content_type}
        )
        anonymous = Client().get(
            f"/api/jobs/{students_job.pk}/export/{name}/", headers={"Accept": content_type}
        )

        assert response.status_code == 200 and response["Content-Type"] == content_type, name
        assert anonymous.status_code in (401, 403), name  # not a 406 for its Accept
        assert anonymous["Content-Type"] == "application/json" and anonymous.json()["detail"]


def test_it_lets_staff_who_may_view_jobs_read_any_course(
    students_job: CourseGenerationJob,
) -> None:
    staff = get_user_model().objects.create_user("viewer", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_coursegenerationjob"))
    staff = get_user_model().objects.get(pk=staff.pk)  # permissions are cached per instance
    assert _page(staff, students_job).status_code == 200
    assert _export(staff, students_job, "md").status_code == 200


@pytest.mark.parametrize("name", list(FORMATS))
def test_it_downloads_each_format_with_its_type_and_file_name(
    name: str, students_job: CourseGenerationJob, teacher: Any
) -> None:
    response = _export(teacher, students_job, name)

    assert response.status_code == 200
    assert response["Content-Type"] == EXPORT_TYPES[name]
    extension = FORMATS[name].extension
    stem = file_stem(_doc(students_job)["title"])
    assert stem.startswith("rivers-and-valleys")
    expected = f'attachment; filename="{stem}.{extension}"'
    assert response["Content-Disposition"] == expected
    assert response["Cache-Control"] == "private, no-store"
    assert len(response.content) > 1000
    flush_all()
    logged = CourseGenerationLog.objects.filter(event="course.exported", job=students_job)
    assert logged.get().data["format"] == name


def test_it_answers_404_for_an_unknown_format_and_409_before_the_course_exists(
    students_job: CourseGenerationJob, teacher: Any, base_class: Any
) -> None:
    unknown = _export(teacher, students_job, "docx")
    assert unknown.status_code == 404
    assert unknown.json()["formats"] == list(FORMATS)

    running = CourseGenerationJob.objects.create(
        owner=teacher,
        organisation=base_class.organisation,
        base_class=base_class,
        request={"topic": "Still running"},
        status=JobStatus.RUNNING,
        progress=40,
    )
    not_ready = _export(teacher, running, "html")
    assert not_ready.status_code == 409
    assert not_ready.json() == {
        "detail": "the course is not ready: the job is running",
        "status": "running",
    }
    page = _page(teacher, running)
    assert page.status_code == 409
    assert b"This course is not ready" in page.content
    assert b'http-equiv="refresh"' in page.content


def test_the_api_job_detail_and_the_admin_job_page_link_to_the_course(
    students_job: CourseGenerationJob, teacher: Any, client_for: Any
) -> None:
    detail = client_for(teacher).get(f"/api/jobs/{students_job.pk}/").json()
    assert detail["course_page_url"] == f"/courses/{students_job.pk}/"
    assert detail["export_urls"] == {
        name: f"/api/jobs/{students_job.pk}/export/{name}/" for name in FORMATS
    }

    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)
    page = client.get(f"/admin/generation/coursegenerationjob/{students_job.pk}/change/")
    html = page.content.decode()
    assert f'<a href="/courses/{students_job.pk}/" id="course-page-link">' in html
    assert html.count('class="course-export"') == len(FORMATS)


def test_the_admin_action_downloads_one_course_or_a_zip_of_several(
    students_job: CourseGenerationJob, teacher: Any, base_class: Any
) -> None:
    second = finished_job(teacher, base_class, topic="Glaciers and ice")
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)
    url = "/admin/generation/coursegenerationjob/"

    one = client.post(url, {"action": "export_md", "_selected_action": [students_job.pk]})
    assert one.status_code == 200
    assert one["Content-Disposition"].endswith('.md"')
    assert one.content.decode().startswith("# Rivers and valleys")

    both = client.post(
        url, {"action": "export_html", "_selected_action": [students_job.pk, second.pk]}
    )
    assert both["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(both.content)).namelist()
    assert sorted(names) == sorted(
        f"{str(job.pk)[:8]}-{file_stem(_doc(job)['title'])}.html" for job in (students_job, second)
    )


def test_the_command_exports_a_job_or_the_latest_one(
    students_job: CourseGenerationJob, teacher: Any, base_class: Any, tmp_path: Any
) -> None:
    newer = finished_job(teacher, base_class, topic="Glaciers and ice")
    target = tmp_path / "course.md"

    call_command("export_course", str(students_job.pk), "--format", "md", "-o", str(target))
    assert target.read_text().startswith("# Rivers and valleys")

    call_command("export_course", "--latest", "--format", "html", "-o", str(target))
    assert f"<title>{escape(_doc(newer)['title'])}</title>" in target.read_text()

    with pytest.raises(CommandError, match="either a job id or --latest"):
        call_command("export_course", "--format", "md")
    with pytest.raises(CommandError, match="is not a job id"):
        call_command("export_course", "nope", "--format", "md")


def test_the_command_refuses_a_course_that_is_not_ready(teacher: Any, tmp_path: Any) -> None:
    base_class = BaseClassFactory.create()
    job = CourseGenerationJob.objects.create(
        owner=teacher,
        organisation=base_class.organisation,
        base_class=base_class,
        request={"topic": "Queued"},
    )
    with pytest.raises(CommandError, match="not ready: the job is queued"):
        call_command("export_course", str(job.pk), "--format", "md", "-o", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
