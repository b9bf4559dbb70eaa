"""What the content cache shows staff: hit rate, savings and false-hit reports on the dashboard
and at /metrics, which parts of a job came from the cache, and the action "Wrong content from
cache" (docs/cache.md#what-staff-see)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from generation import services
from generation.cache import reports
from generation.cache_models import CacheEntry, CacheFalseHit
from generation.models import CourseGenerationJob, GenerationAttempt, JobStatus
from generation.schemas import CourseRequest
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog

pytestmark = pytest.mark.django_db(transaction=True)
SMALL = {"num_modules": 1, "lessons_per_module": 1, "questions_per_lesson": 2}


def _submit(user: Any, base_class: Any, topic: str) -> CourseGenerationJob:
    request = CourseRequest(topic=topic, audience="secondary school students", **SMALL)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    job = CourseGenerationJob.objects.get(pk=job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


@pytest.fixture
def staff_client() -> Client:
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def served(teacher: Any, base_class: Any) -> dict[str, CourseGenerationJob]:
    """A course, the same course again (exact hits) and a paraphrase (similar hits)."""
    # Log rows an earlier test left in the buffer would count as lookups here.
    flush_all()
    CourseGenerationLog.objects.all().delete()
    first = _submit(teacher, base_class, "Earthquakes and plate tectonics")
    again = _submit(teacher, base_class, "Earthquakes and plate tectonics")
    paraphrase = _submit(teacher, base_class, "Plate tectonics and earthquakes")
    flush_all()
    return {"first": first, "again": again, "paraphrase": paraphrase}


def test_the_dashboard_and_metrics_show_hit_rate_savings_and_false_hits(
    served: dict[str, CourseGenerationJob], staff_client: Client
) -> None:
    # 4 cached kinds per course (outline, section, assessment, brain byte): 12 lookups, 8 hits
    hits = GenerationAttempt.objects.filter(kind="cache")
    saved = sum(h.saved_cost_usd for h in hits)
    assert hits.count() == 8

    html = staff_client.get("/admin/").content.decode()
    row = re.search(r'<tr id="cache-figures">(.*?)</tr>', html, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    assert cells[:4] == ["12", "67% (8/12)", "4", "4"]
    assert cells[4] == f"{saved:.4f}" and cells[6] == "0"

    metrics = staff_client.get("/metrics").content.decode()
    assert re.search(r'coursegen_cache_lookups_\d+h\{outcome="hit_similar"\} 4\.0', metrics)
    assert re.search(r"coursegen_cache_hit_ratio_\d+h 0\.66", metrics)
    assert re.search(r"coursegen_cache_false_hits_\d+h 0\.0", metrics)
    assert "coursegen_cache_saved_seconds_" in metrics
    assert re.search(r"coursegen_cache_entries 4\.0", metrics)
    # a cache hit is not a provider call
    assert 'coursegen_provider_calls_24h{model="gpt-4.1-mini",task_kind="outline"} 1.0' in metrics


def test_the_job_page_shows_which_parts_came_from_the_cache(
    served: dict[str, CourseGenerationJob], staff_client: Client
) -> None:
    def page(job: CourseGenerationJob) -> str:
        url = f"/admin/generation/coursegenerationjob/{job.pk}/change/"
        return staff_client.get(url).content.decode()

    first, again, paraphrase = (
        page(served["first"]),
        page(served["again"]),
        page(served["paraphrase"]),
    )

    assert "cache (" not in first and 'id="job-cache-summary"' not in first
    assert again.count("cache (exact)") == 4 and paraphrase.count("cache (similar)") == 4
    assert "4 parts served from the content cache" in paraphrase
    assert paraphrase.count(">generated<") == 3  # module summary, mind map, metadata


def test_staff_report_wrong_content_from_a_task_the_cache_served(
    served: dict[str, CourseGenerationJob], staff_client: Client, teacher: Any, base_class: Any
) -> None:
    task = served["paraphrase"].tasks.get(kind="outline")
    entry_id = reports.cache_entry_of_task(task=task)
    assert entry_id is not None

    response = staff_client.post(
        "/admin/generation/generationtask/",
        {"action": "report_wrong_content_of_tasks", "_selected_action": [task.pk]},
        follow=True,
    )

    assert "Deleted 1 cache entry" in response.content.decode()
    assert not CacheEntry.objects.filter(pk=entry_id).exists()
    report = CacheFalseHit.objects.get()
    assert report.kind == "outline" and report.hits == 2 and report.reported_by is not None
    assert report.context["topic"] == "earthquakes and plate tectonics"
    # the outline is generated again next time (its lessons' entries still serve)
    fourth = _submit(teacher, base_class, "Earthquakes and plate tectonics")
    assert not GenerationAttempt.objects.filter(
        task__job=fourth, task__kind="outline", kind="cache"
    ).exists()
    flush_all()
    html = staff_client.get("/admin/").content.decode()
    assert "generation/cachefalsehit/" in html


def test_staff_report_wrong_content_from_the_entry_list(
    served: dict[str, CourseGenerationJob], staff_client: Client
) -> None:
    entries = list(CacheEntry.objects.filter(kind="assessment").values_list("pk", flat=True))

    response = staff_client.post(
        "/admin/generation/cacheentry/",
        {"action": "report_wrong_content", "_selected_action": entries},
        follow=True,
    )

    assert "Deleted 1 cache entry" in response.content.decode()
    assert not CacheEntry.objects.filter(kind="assessment").exists()
    assert CacheFalseHit.objects.filter(kind="assessment").count() == 1
    assert staff_client.get("/admin/generation/cachefalsehit/").status_code == 200
    # a task whose entry is gone already: nothing to delete, said so
    task = served["again"].tasks.get(kind="assessment")
    response = staff_client.post(
        "/admin/generation/generationtask/",
        {"action": "report_wrong_content_of_tasks", "_selected_action": [task.pk]},
        follow=True,
    )
    assert "not served from the cache, or their entry is gone" in response.content.decode()
