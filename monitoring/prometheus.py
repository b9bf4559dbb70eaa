"""GET /metrics in the Prometheus text format, computed from the database at scrape time.

Access: `Authorization: Bearer <MONITORING_METRICS_TOKEN>` (when that setting is set) or a staff
session with the permission monitoring.view_metrics (never an organisation administrator's);
anything else gets 403. Windowed figures cover the last MONITORING_METRICS_WINDOW_H hours, so a
scrape never reads whole tables of history.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accounts.selectors import is_organisation_admin
from generation.models import CourseGenerationJob
from generation.selectors import capacity_now
from monitoring import metrics
from monitoring.models import Alert


class CourseGenerationCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        hours = settings.MONITORING_METRICS_WINDOW_H
        since = timezone.now() - timedelta(hours=hours)
        yield from self._state()
        yield from self._providers(since, hours)
        yield from self._courses(since, hours)
        yield from self._cache(since, hours)

    def _state(self) -> Iterator[Metric]:
        now = capacity_now()
        yield GaugeMetricFamily(
            "coursegen_running_jobs", "Jobs holding a slot", value=now["running"]
        )
        yield GaugeMetricFamily(
            "coursegen_queue_depth", "Jobs waiting to start", value=now["queued"]
        )
        yield GaugeMetricFamily(
            "coursegen_running_jobs_cap",
            "Global cap on running jobs",
            value=settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS,
        )
        alerts = GaugeMetricFamily(
            "coursegen_alerts_unacknowledged", "Unacknowledged alerts", labels=["kind"]
        )
        for row in (
            Alert.objects.filter(acknowledged_at__isnull=True)
            .values("kind")
            .annotate(n=Count("pk"))
        ):
            alerts.add_metric([row["kind"]], row["n"])
        yield alerts

    def _providers(self, since: datetime, hours: int) -> Iterator[Metric]:
        labels = ["model", "task_kind"]
        w = f"{hours}h"
        calls = GaugeMetricFamily(f"coursegen_provider_calls_{w}", "Provider calls", labels=labels)
        success = GaugeMetricFamily(
            f"coursegen_provider_success_ratio_{w}",
            "Share of calls with valid output",
            labels=labels,
        )
        latency = GaugeMetricFamily(
            f"coursegen_provider_latency_ms_{w}", "Call latency", labels=[*labels, "quantile"]
        )
        tokens = GaugeMetricFamily(
            f"coursegen_provider_tokens_{w}", "Tokens", labels=[*labels, "type"]
        )
        cost = GaugeMetricFamily(f"coursegen_provider_cost_usd_{w}", "Cost in USD", labels=labels)
        for s in metrics.provider_stats(since=since):
            key = [s.model, s.task_kind]
            calls.add_metric(key, s.calls)
            success.add_metric(key, s.success_rate)
            latency.add_metric([*key, "0.5"], s.p50_ms)
            latency.add_metric([*key, "0.95"], s.p95_ms)
            for kind, value in (
                ("input", s.input_tokens),
                ("cached", s.cached_tokens),
                ("output", s.output_tokens),
            ):
                tokens.add_metric([*key, kind], value)
            cost.add_metric(key, float(s.cost_usd))
        yield from (calls, success, latency, tokens, cost)

    def _courses(self, since: datetime, hours: int) -> Iterator[Metric]:
        w = f"{hours}h"
        totals = metrics.window_totals(since=since)
        yield GaugeMetricFamily(
            f"coursegen_courses_{w}", "Courses finished", value=totals["courses"]
        )
        yield GaugeMetricFamily(
            f"coursegen_failed_jobs_{w}", "Jobs failed", value=totals["failures"]
        )
        yield GaugeMetricFamily(
            f"coursegen_cost_per_course_usd_{w}",
            "Cost per finished course",
            value=float(totals["cost_per_course"]),
        )
        jobs = GaugeMetricFamily("coursegen_jobs", "Jobs by status", labels=["status"])
        for row in CourseGenerationJob.objects.values("status").annotate(n=Count("pk")):
            jobs.add_metric([row["status"]], row["n"])
        yield jobs

    def _cache(self, since: datetime, hours: int) -> Iterator[Metric]:
        w = f"{hours}h"
        stats = metrics.cache_stats(since=since)
        lookups = GaugeMetricFamily(
            f"coursegen_cache_lookups_{w}", "Content cache lookups by outcome", labels=["outcome"]
        )
        lookups.add_metric(["hit_exact"], stats.hits_exact)
        lookups.add_metric(["hit_similar"], stats.hits_similar)
        lookups.add_metric(["miss"], stats.lookups - stats.hits)
        yield lookups
        yield GaugeMetricFamily(
            f"coursegen_cache_hit_ratio_{w}", "Share of lookups served", value=stats.hit_rate or 0
        )
        yield GaugeMetricFamily(
            f"coursegen_cache_saved_usd_{w}",
            "What the hits' generation had cost",
            value=float(stats.saved_usd),
        )
        yield GaugeMetricFamily(
            f"coursegen_cache_saved_seconds_{w}",
            "How long the hits' generation had taken",
            value=stats.saved_s,
        )
        yield GaugeMetricFamily(
            f"coursegen_cache_false_hits_{w}",
            "Staff reports of wrong content from the cache",
            value=stats.false_hits,
        )
        yield GaugeMetricFamily(
            "coursegen_cache_entries", "Live content cache entries", value=stats.entries
        )


def _allowed(request: HttpRequest) -> bool:
    token = settings.MONITORING_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    # Platform-wide figures: staff with the named permission, never an organisation's admin.
    user = request.user
    return bool(
        user.is_authenticated
        and user.is_staff
        and user.has_perm("monitoring.view_metrics")
        and not is_organisation_admin(user)
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CourseGenerationCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
