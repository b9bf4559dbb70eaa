"""The admin dashboard: charts, unacknowledged alerts, running jobs, a job's timeline and logs.

The last test renders it in headless Chromium (Debian's `chromium`, installed by .ci/run).
Set DASHBOARD_SCREENSHOT=/path/to/file.png to also save a screenshot of it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.test import Client

from generation import services
from generation.models import CourseGenerationJob, JobStatus
from generation.providers import get_provider
from generation.schemas import CourseRequest
from monitoring.logs import flush_all
from monitoring.models import Alert, AlertKind, CourseGenerationLog
from monitoring.services import alert_raise

pytestmark = pytest.mark.django_db(transaction=True)

CHART_IDS = ("chart-jobs-by-status", "chart-cost-per-day", "chart-error-rate", "chart-quality")


@pytest.fixture
def activity(teacher: Any, base_class: Any, settings: Any) -> dict[str, Any]:
    request = CourseRequest(topic="Volcanoes", num_modules=1, lessons_per_module=2)
    done = services.job_submit(user=teacher, base_class=base_class, request=request)
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # invalid replies can be combined
    get_provider.cache_clear()  # the provider is built once per process
    failed = services.job_submit(user=teacher, base_class=base_class, request=request)
    running = CourseGenerationJob.objects.create(
        owner=teacher,
        organisation=base_class.organisation,
        base_class=base_class,
        request={"topic": "Running right now"},
        status=JobStatus.RUNNING,
        progress=40,
    )
    alert_raise(kind=AlertKind.CAPACITY_WARNING, subject="queue depth", message="deep queue")
    flush_all()
    return {"done": done, "failed": failed, "running": running}


@pytest.fixture
def staff_client() -> Client:
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)
    return client


def test_the_admin_index_shows_charts_alerts_and_running_jobs(
    activity: dict[str, Any], staff_client: Client
) -> None:
    html = staff_client.get("/admin/").content.decode()

    for chart_id in CHART_IDS:
        assert re.search(rf'<svg id="{chart_id}" class="cg-chart"', html), chart_id
    assert html.count('class="cg-bar"') >= 2  # bars drawn for today's jobs and cost
    # The finished course was evaluated at finalize: its score is in the distribution.
    quality = re.search(r'<svg id="chart-quality".*?</svg>', html, re.DOTALL)
    assert quality is not None and 'class="cg-bar"' in quality.group(0)
    assert "No quality scores recorded yet" not in html
    alerts = re.findall(r'<tr class="alert-row" data-kind="([a-z_]+)"', html)
    assert sorted(alerts) == sorted(Alert.objects.values_list("kind", flat=True))
    assert {"capacity_warning", "critical_error"} <= set(alerts)
    assert '<progress value="40" max="100">' in html
    assert "Running right now" in html


def test_the_dashboard_is_for_staff_only(activity: dict[str, Any], teacher: Any) -> None:
    client = Client()
    assert client.get("/admin/").status_code == 302  # to the login page
    client.force_login(teacher)  # not staff
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "chart-jobs-by-status" not in response.content.decode()


def test_a_jobs_page_shows_its_task_timeline_and_its_logs(
    activity: dict[str, Any], staff_client: Client
) -> None:
    job = CourseGenerationJob.objects.get(pk=activity["failed"].pk)

    html = staff_client.get(f"/admin/generation/coursegenerationjob/{job.pk}/change/").content
    page = html.decode()

    assert 'id="job-timeline"' in page and 'id="job-logs"' in page
    assert page.count('class="timeline-row"') == job.tasks.count()
    assert "bar st-failed" in page
    story = CourseGenerationLog.objects.filter(
        Q(job=job) | Q(correlation_id=job.correlation_id)
    )  # rows about the job, and rows written anywhere under its correlation id
    assert (
        page.count("log-row lv-")
        == story.count()
        > CourseGenerationLog.objects.filter(job=job).count()
    )
    assert "job.failed" in page and str(job.correlation_id) in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(binary: str, profile: Path, *args: str) -> str:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.urls("tests.urls_chromium")
def test_it_renders_the_dashboard_in_headless_chromium(
    activity: dict[str, Any], staff_client: Client, live_server: Any, tmp_path: Path
) -> None:
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    base = live_server.url.replace("localhost", "127.0.0.1")
    session = staff_client.cookies["sessionid"].value
    url = f"{base}/__test__/session/?key={session}&next=/admin/"

    dom = _run_chromium(binary, tmp_path / "profile", "--dump-dom", url)

    assert "Site administration" in dom, dom[:2000]  # logged in, not the login page
    for chart_id in CHART_IDS:
        assert re.search(rf'<svg id="{chart_id}" class="cg-chart"', dom), chart_id
    assert re.search(r'<table id="alert-list">', dom)
    assert len(re.findall(r'<tr class="alert-row"', dom)) == Alert.objects.count()
    if screenshot := os.environ.get("DASHBOARD_SCREENSHOT"):
        _run_chromium(
            binary,
            tmp_path / "profile-shot",
            f"--screenshot={Path(screenshot).resolve()}",
            "--window-size=1400,2200",
            "--hide-scrollbars",
            url,
        )
        assert Path(screenshot).stat().st_size > 0


def test_the_error_rate_chart_labels_its_half_way_line_with_what_it_is() -> None:
    from monitoring import charts

    svg = charts.line("chart-error-rate", "Provider error rate", ["12-05", "12-06"], [0.0, 0.0])

    labels = re.findall(r'text-anchor="end" fill="#555">([^<]+)<', svg)
    assert labels == ["0.5%", "1.0%"]  # the axis starts at 1 %: its half-way line is not "0%"


@pytest.mark.parametrize(
    ("largest", "expected"), [(1, ["1", "2"]), (3, ["2", "4"]), (4, ["2", "4"]), (7, ["4", "8"])]
)
def test_count_charts_label_their_half_way_line_with_a_whole_count(
    largest: int, expected: list[str]
) -> None:
    from monitoring import charts

    histogram = charts.histogram("chart-quality", "Quality", [0.95] * largest + [0.15])
    jobs = charts.stacked_bars(
        "chart-jobs-by-status", "Jobs", ["12-05", "12-06"], {"succeeded": [largest, 1]}
    )

    for svg in (histogram, jobs):
        labels = re.findall(r'text-anchor="end" fill="#555">([^<]+)<', svg)
        assert labels == expected  # an odd top had labelled 1.5 as "2" and 0.5 as "0"
        # The tallest bar reaches the top line only when the largest count is the top.
        heights = [float(h) for h in re.findall(r'class="cg-bar"[^>]* height="([\d.]+)"', svg)]
        plot_h = charts.HEIGHT - charts.TOP - charts.BOTTOM
        assert max(heights) == pytest.approx(plot_h * largest / int(expected[1]), abs=0.05)
