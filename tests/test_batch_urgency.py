"""Urgency on submit: "now" (default) or "batch", a role policy, and staff changing it while the
job waits (docs/batch.md)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Role
from generation import services
from generation.models import CourseGenerationJob, JobStatus, Urgency
from generation.schemas import CourseRequest
from ratelimits.models import Admission

pytestmark = pytest.mark.django_db

VALID = {"topic": "Fractions for beginners", "num_modules": 1, "lessons_per_module": 1}


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch: Any) -> None:
    monkeypatch.setattr(services.dispatch, "send_dispatch", lambda: None)  # jobs stay queued


def _submit(client: Any, base_class: Any, **body: Any) -> Any:
    return client.post(
        "/api/jobs/", {"base_class": str(base_class.pk), **VALID, **body}, format="json"
    )


def test_it_defaults_to_now_and_accepts_batch(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    client = client_for(teacher)

    now = _submit(client, base_class)
    batch = _submit(client, base_class, urgency="batch")

    assert now.status_code == 201 and now.json()["urgency"] == "now"
    assert batch.status_code == 201, batch.json()
    assert batch.json()["urgency"] == "batch"
    assert CourseGenerationJob.objects.get(pk=batch.json()["id"]).urgency == Urgency.BATCH
    # The request itself stays the course's: urgency is how it runs, not what it is.
    assert "urgency" not in batch.json()["request"]


def test_it_rejects_an_unknown_urgency_with_a_field_error(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    response = _submit(client_for(teacher), base_class, urgency="tomorrow")

    assert response.status_code == 400
    assert "urgency" in response.json()


def test_it_refuses_batch_to_a_role_the_policy_leaves_out(
    client_for: Any, make_member: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_BATCH_ROLES = ["teacher", "admin"]
    student = make_member(Role.STUDENT)

    refused = _submit(client_for(student), base_class, urgency="batch")

    assert refused.status_code == 403
    assert "student" in refused.json()["urgency"][0]
    assert not CourseGenerationJob.objects.exists()
    assert not Admission.objects.exists()  # the admission rolled back with the refusal
    assert _submit(client_for(student), base_class).status_code == 201  # "now" is fine


def test_staff_change_a_queued_jobs_urgency_in_the_admin(teacher: Any, base_class: Any) -> None:
    job = services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)
    url = f"/admin/generation/coursegenerationjob/{job.pk}/change/"

    page = client.get(url)
    form = {"priority": job.priority, "urgency": "batch"}
    for inline in page.context["inline_admin_formsets"]:  # the inlines as they are
        formset = inline.formset
        for each in [formset.management_form, *formset.forms]:
            form |= {
                each.add_prefix(name): value
                for name in each.fields
                if (value := each[name].value()) is not None
            }

    response = client.post(url, form)

    assert response.status_code == 302
    job.refresh_from_db()
    assert job.urgency == Urgency.BATCH


def test_a_running_jobs_urgency_stays(teacher: Any, base_class: Any) -> None:
    job = services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    CourseGenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)

    with pytest.raises(services.GenerationError, match="only a queued job"):
        services.job_set_urgency(job_id=job.pk, urgency=Urgency.BATCH)
    services.job_set_urgency(job_id=job.pk, urgency=Urgency.NOW)  # unchanged: not an error
