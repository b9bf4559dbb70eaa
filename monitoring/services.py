"""Writes for monitoring: alerts (raise with deduplication, acknowledge) and log retention.

Monitoring imports no other app: every app raises its own alerts through `alert_raise`.
Alert kinds and the code that raises them:
- critical_error: a failed job (`job_outcome_record` in generation/services/alerts.py, called by
  job_finalize) and any critical log record (`alert_for_critical_log`, called by the database log
  handler).
- capacity_warning: `capacity_check` (generation/services/alerts.py), called after every
  queue_dispatch (so also every 5 s by beat).
- quality_below_threshold: `quality_check` (generation/services/alerts.py), for every succeeded
  job.
- rate_limit_violation, circuit_breaker_opened: raised by the rate-limit code and, on the
  breaker_changed signal (monitoring/signals.py), with
  `alert_raise(kind=AlertKind.RATE_LIMIT_VIOLATION, subject=f"user:{user_id}", ...)` and
  `alert_raise(kind=AlertKind.CIRCUIT_BREAKER_OPENED, subject=f"model:{model}", ...)`.
- budget: an organisation's commitment reached the alert share of its monthly budget, once a month
  (`soft_alert_raise` in ratelimits/budgets.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from monitoring.logs import log_event
from monitoring.models import Alert, AlertKind, AlertSeverity, CourseGenerationLog

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

# Everything monitoring logs about itself goes here; such records never raise alerts (no loops).
logger = logging.getLogger("coursegen.monitoring")


# --- Raising and acknowledging alerts -------------------------------------------------------------
def alert_raise(
    *,
    kind: AlertKind | str,
    subject: str,
    message: str,
    severity: AlertSeverity | str = AlertSeverity.WARNING,
    data: dict[str, Any] | None = None,
    organisation_id: Any = None,
) -> Alert:
    """Open an alert, or count a repeat into the open alert of the same kind and subject.

    A repeat within MONITORING_ALERT_DEDUP_WINDOW_S of the open alert's last occurrence only bumps
    its count and last_seen_at; a later one closes the stale alert (it stays unacknowledged for
    staff) and opens a new one. A partial unique index allows one open alert per kind and
    subject, so two processes racing to create it cannot both succeed: the loser retries and
    counts into the winner's row. `organisation_id`: whose alert it is (an organisation's
    administrators see it in the admin); None for the platform's operators only.
    """
    kind, severity, subject = AlertKind(kind), AlertSeverity(severity), subject[:200]
    for attempt in range(3):
        try:
            with transaction.atomic():
                alert, created = _alert_upsert(
                    kind, subject, message, severity, data or {}, organisation_id
                )
            break
        except IntegrityError:
            if attempt == 2:
                raise
    if created:
        log_event(
            "alert.raised",
            f"{kind.label}: {subject}",
            level="warning",
            data={"alert_id": alert.pk, "kind": kind, "severity": severity},
            logger=logger,
        )
        if settings.MONITORING_ALERT_EMAIL:
            transaction.on_commit(lambda: _alert_mail(alert_id=alert.pk))
    return alert


def _alert_upsert(
    kind: AlertKind,
    subject: str,
    message: str,
    severity: AlertSeverity,
    data: dict[str, Any],
    organisation_id: Any,
) -> tuple[Alert, bool]:
    now = timezone.now()
    window = timedelta(seconds=settings.MONITORING_ALERT_DEDUP_WINDOW_S)
    current = (
        Alert.objects.select_for_update()
        .filter(kind=kind, subject=subject, closed_at__isnull=True)
        .first()
    )
    if current is not None and current.last_seen_at >= now - window:
        Alert.objects.filter(pk=current.pk).update(
            count=F("count") + 1, last_seen_at=now, message=message, data=data
        )
        current.refresh_from_db()
        return current, False
    if current is not None:
        Alert.objects.filter(pk=current.pk).update(closed_at=now)
    alert = Alert.objects.create(
        kind=kind,
        subject=subject,
        message=message,
        severity=severity,
        data=data,
        last_seen_at=now,
        organisation_id=organisation_id,
    )
    return alert, True


def _alert_mail(*, alert_id: int) -> None:
    alert = Alert.objects.get(pk=alert_id)
    mail_admins(
        f"[{alert.severity}] {alert.get_kind_display()}: {alert.subject}",
        f"{alert.message}\n\nFirst seen {alert.first_seen_at:%Y-%m-%d %H:%M:%S} UTC.",
        fail_silently=True,
    )
    Alert.objects.filter(pk=alert_id).update(emailed_at=timezone.now())


def alert_acknowledge(*, alerts: QuerySet[Alert], user: AbstractBaseUser) -> int:
    """Staff saw it: acknowledged alerts are closed, so the next occurrence opens a new one."""
    now = timezone.now()
    return alerts.filter(acknowledged_at__isnull=True).update(
        acknowledged_by=user, acknowledged_at=now, closed_at=Coalesce("closed_at", now)
    )


# --- The code paths that raise them ---------------------------------------------------------------
def alert_for_critical_log(*, row: dict[str, Any]) -> Alert:
    """Called by the log handler for each critical record it has written."""
    return alert_raise(
        kind=AlertKind.CRITICAL_ERROR,
        subject=f"log:{row['logger']}:{row['event']}",
        message=row["message"],
        severity=AlertSeverity.CRITICAL,
        data={
            "correlation_id": row.get("correlation_id"),
            "job_id": str(row["job_id"]) if row.get("job_id") else None,
            "source": row.get("source"),
        },
    )


# --- Retention ------------------------------------------------------------------------------------
def logs_prune(*, older_than_days: int, batch_size: int = 5000) -> int:
    """Delete log rows older than the given age in batches, each its own short transaction."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    old = CourseGenerationLog.objects.filter(created_at__lt=cutoff).order_by()
    deleted = 0
    while True:
        ids = list(old.values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += CourseGenerationLog.objects.filter(pk__in=ids).delete()[0]
