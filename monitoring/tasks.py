"""Periodic monitoring work (celery beat)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from monitoring import services


@shared_task(name="monitoring.tasks.prune_logs", ignore_result=True)
def prune_logs() -> int:
    return services.logs_prune(older_than_days=settings.MONITORING_LOG_RETENTION_DAYS)
