"""What the content cache shows staff, in headless Chromium (screenshots in artifacts/screenshots/):
the dashboard's cache figures, and a job's page with the parts served from the cache."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from generation import services
from generation.models import CourseGenerationJob, JobStatus
from generation.schemas import CourseRequest
from monitoring.logs import flush_all
from tests.browser import chromium_or_skip, run_node, screenshot_path

pytestmark = pytest.mark.django_db(transaction=True)


def _cookies(user: Any) -> list[dict[str, str]]:
    client = Client()
    client.force_login(user)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [
        {"name": settings.SESSION_COOKIE_NAME, "value": key, "domain": "127.0.0.1", "path": "/"}
    ]


def _submit(user: Any, base_class: Any, topic: str) -> CourseGenerationJob:
    request = CourseRequest(topic=topic, num_modules=1, lessons_per_module=2)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    job = CourseGenerationJob.objects.get(pk=job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def test_it_shows_cache_figures_on_the_dashboard_and_cached_parts_on_the_job_page(
    teacher: Any, base_class: Any, live_server: Any
) -> None:
    binary = chromium_or_skip()
    _submit(teacher, base_class, "Earthquakes and plate tectonics")
    paraphrase = _submit(teacher, base_class, "Plate tectonics and earthquakes")
    flush_all()
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    base = live_server.url.replace("localhost", "127.0.0.1")
    dashboard_shot = screenshot_path("admin-dashboard-cache.png")
    job_shot = screenshot_path("admin-job-from-cache.png")
    spec = {
        "chromium": binary,
        "pages": [
            {
                "url": f"{base}/admin/",
                "cookies": _cookies(staff),
                "shots": [{"path": str(dashboard_shot), "width": 1366, "height": 1400}],
            },
            {
                "url": f"{base}/admin/generation/coursegenerationjob/{paraphrase.pk}/change/",
                "cookies": _cookies(staff),
                "shots": [{"path": str(job_shot), "width": 1366, "height": 900, "fullPage": True}],
            },
        ],
    }

    dashboard, job_page = run_node("probe_pages.mjs", spec)["pages"]

    assert dashboard["status"] == 200 and dashboard["consoleErrors"] == []
    assert "Content cache" in dashboard["text"] and "50% (7/14)" in dashboard["text"]
    assert job_page["status"] == 200 and job_page["consoleErrors"] == []
    assert "7 parts served from the content cache" in job_page["text"]
    assert job_page["text"].count("cache (similar)") == 7
    assert dashboard_shot.stat().st_size > 0 and job_shot.stat().st_size > 0
