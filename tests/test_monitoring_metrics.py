"""Metrics per model and task kind and per day, and the Prometheus endpoint."""

from __future__ import annotations

import statistics
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from generation import services
from generation.models import CourseGenerationJob, GenerationAttempt, JobStatus
from generation.providers import get_provider
from generation.schemas import CourseRequest
from monitoring.metrics import daily_stats, provider_stats

pytestmark = pytest.mark.django_db(transaction=True)


def _run_job(user: Any, base_class: Any, **overrides: Any) -> CourseGenerationJob:
    request = CourseRequest(topic="Coral reefs", num_modules=1, lessons_per_module=2, **overrides)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    return CourseGenerationJob.objects.get(pk=job.pk)


def _latency_quantiles(values: list[int]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]


def test_it_reports_calls_success_latency_tokens_and_cost_per_model_and_task_kind(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = "server_error=0.3"
    settings.COURSEGEN_OFFLINE_SEED = 3
    settings.COURSEGEN_OFFLINE_LATENCY_SCALE = 0.001
    settings.COURSEGEN_TRANSIENT_BASE_WAIT_S = 0
    settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS = 8
    _run_job(teacher, base_class)

    stats = {
        (s.model, s.task_kind): s for s in provider_stats(since=timezone.now() - timedelta(hours=1))
    }

    section = stats[(settings.COURSEGEN_MODEL_COMPLEX, "lesson_section")]
    attempts = GenerationAttempt.objects.filter(
        model=settings.COURSEGEN_MODEL_COMPLEX, task__kind="lesson_section"
    )
    assert section.calls == attempts.count()
    assert section.ok == attempts.filter(outcome="ok").count()
    assert section.success_rate == section.ok / section.calls
    p50, p95 = _latency_quantiles(list(attempts.values_list("latency_ms", flat=True)))
    assert section.p50_ms == pytest.approx(p50) and section.p95_ms == pytest.approx(p95)
    totals = attempts.aggregate(out=Sum("output_tokens"), cost=Sum("cost_usd"))
    assert section.output_tokens == totals["out"] and section.cost_usd == totals["cost"]
    assert sum(s.calls for s in stats.values()) == GenerationAttempt.objects.count()
    assert any(s.success_rate < 1 for s in stats.values())  # the injected 5xx show up


def test_it_reports_courses_cost_per_course_and_failures_per_day(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    good = [_run_job(teacher, base_class), _run_job(teacher, base_class)]
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # invalid replies can be combined
    get_provider.cache_clear()  # the provider is built once per process
    _run_job(teacher, base_class)

    today = daily_stats(days=14)[-1]

    assert today.day == timezone.now().date()
    assert today.courses == 2 and today.failures == 1
    assert today.by_status == {JobStatus.SUCCEEDED: 2, JobStatus.FAILED: 1}
    expected = sum((j.cost_usd for j in good), Decimal(0)) / 2
    assert today.cost_per_course == expected.quantize(Decimal("0.000001"))
    assert today.error_rate is not None and 0 < today.error_rate < 1


def test_the_metrics_endpoint_needs_a_token_or_staff_and_reports_from_the_database(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.MONITORING_METRICS_TOKEN = "scrape-token"
    job = _run_job(teacher, base_class)
    client = Client()

    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token")

    assert response.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }
    assert samples[("coursegen_jobs", (("status", "succeeded"),))] == 1
    assert samples[("coursegen_courses_24h", ())] == 1
    assert samples[("coursegen_cost_per_course_usd_24h", ())] == pytest.approx(float(job.cost_usd))
    calls = sum(v for (name, _), v in samples.items() if name == "coursegen_provider_calls_24h")
    assert calls == GenerationAttempt.objects.count()

    staff = get_user_model().objects.create_user("ops", is_staff=True)
    client.force_login(staff)
    assert client.get("/metrics").status_code == 403  # staff, but not the named permission
    staff.user_permissions.add(Permission.objects.get(codename="view_metrics"))
    client.force_login(get_user_model().objects.get(pk=staff.pk))
    assert client.get("/metrics").status_code == 200
