"""What moderation shows people, in headless Chromium (screenshots in artifacts/screenshots/):
the course page of a course with held content, and the admin's held-content list."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from generation.providers.offline.moderation import UNSAFE_SENTENCE
from tests.browser import chromium_or_skip, run_node, screenshot_path
from tests.courses import UnsafeProvider, finished_job

pytestmark = pytest.mark.django_db(transaction=True)


def _cookies(user: Any) -> list[dict[str, str]]:
    client = Client()
    client.force_login(user)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [
        {"name": settings.SESSION_COOKIE_NAME, "value": key, "domain": "127.0.0.1", "path": "/"}
    ]


def test_it_shows_held_content_on_the_course_page_and_in_the_admin(
    teacher: Any,
    admin_user: Any,
    base_class: Any,
    live_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    binary = chromium_or_skip()
    settings.COURSEGEN_JUDGE_ENABLED = False
    provider = UnsafeProvider(always={"lesson_section m1.l1"})
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)
    job = finished_job(teacher, base_class)
    base = live_server.url.replace("localhost", "127.0.0.1")
    page_shot = screenshot_path("course-page-held.png")
    admin_shot = screenshot_path("admin-held-content.png")
    spec = {
        "chromium": binary,
        "pages": [
            {
                "url": f"{base}/courses/{job.pk}/",
                "cookies": _cookies(teacher),
                "shots": [{"path": str(page_shot), "width": 1366, "height": 900}],
            },
            {
                "url": f"{base}/admin/generation/heldcontent/",
                "cookies": _cookies(admin_user),
                "shots": [{"path": str(admin_shot), "width": 1366, "height": 700}],
            },
        ],
    }

    course_page, admin_page = run_node("probe_pages.mjs", spec)["pages"]

    assert course_page["status"] == 200 and course_page["consoleErrors"] == []
    assert (
        "Held for review" in course_page["text"] and "lesson_section m1.l1" in course_page["text"]
    )
    assert "Download" not in course_page["text"] and UNSAFE_SENTENCE not in course_page["text"]
    assert admin_page["status"] == 200
    assert "dangerous" in admin_page["text"] and "Held for staff review" in admin_page["text"]
    assert page_shot.stat().st_size > 0 and admin_shot.stat().st_size > 0
