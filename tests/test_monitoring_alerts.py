"""Alerts: each kind through the code path that raises it, deduplication, races, acknowledgement."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from generation import services
from generation.models import CourseGenerationJob, JobStatus
from generation.schemas import CourseRequest
from generation.tasks import dispatch_queue
from monitoring.logs import flush_all
from monitoring.models import Alert, AlertKind, AlertSeverity
from monitoring.services import alert_raise


def _submit(user: Any, base_class: Any, topic: str = "Deserts") -> CourseGenerationJob:
    request = CourseRequest(topic=topic, num_modules=1, lessons_per_module=1)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    return CourseGenerationJob.objects.get(pk=job.pk)


@pytest.mark.django_db(transaction=True)
def test_it_raises_one_critical_alert_for_failed_jobs_and_counts_repeats(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # invalid replies can be combined

    first = _submit(teacher, base_class, "Deserts")
    second = _submit(teacher, base_class, "Oases")

    assert first.status == second.status == JobStatus.FAILED
    alert = Alert.objects.get(kind=AlertKind.CRITICAL_ERROR, subject="job failed")
    assert alert.count == 2  # deduplicated: one open alert, counted twice
    assert alert.severity == AlertSeverity.CRITICAL
    assert alert.data["job_id"] == str(second.pk)  # the latest occurrence
    assert str(second.pk) in alert.message


@pytest.mark.django_db(transaction=True)
def test_it_raises_a_critical_alert_for_any_critical_log_record() -> None:
    logging.getLogger("coursegen.generation").critical("provider credentials rejected")
    logging.getLogger("coursegen.generation").critical("provider credentials rejected")
    flush_all()

    alert = Alert.objects.get(kind=AlertKind.CRITICAL_ERROR)
    assert alert.subject == "log:coursegen.generation:coursegen.generation"
    assert alert.message == "provider credentials rejected"
    assert alert.count == 2


@pytest.mark.django_db(transaction=True)
def test_it_does_not_alert_on_its_own_critical_records() -> None:
    logging.getLogger("coursegen.monitoring").critical("the alert table is unreachable")
    flush_all()

    assert not Alert.objects.exists()


@pytest.mark.django_db
def test_it_warns_when_running_jobs_or_the_queue_reach_the_capacity_threshold(
    make_member: Any, base_class: Any, settings: Any
) -> None:
    # A non-transactional test: on_commit never fires, so started jobs stay running.
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 2
    settings.MONITORING_CAPACITY_WARN_FRACTION = 0.8
    user = make_member(Role.ADMIN)  # admins may hold 10 unfinished jobs; teachers only 3
    for n in range(3):
        _submit(user, base_class, f"Topic {n}")

    dispatch_queue()  # what beat runs every few seconds: 2 start, 1 waits

    running = Alert.objects.get(kind=AlertKind.CAPACITY_WARNING, subject="running jobs")
    assert running.data["count"] == 2 and running.data["cap"] == 2
    assert not Alert.objects.filter(subject="queue depth").exists()  # 1 waiting < 1.6

    _submit(user, base_class, "Topic 3")
    dispatch_queue()

    running.refresh_from_db()
    assert running.count == 2
    assert Alert.objects.get(kind=AlertKind.CAPACITY_WARNING, subject="queue depth").count == 1


@pytest.mark.django_db(transaction=True)
def test_it_alerts_when_a_finished_jobs_quality_is_below_the_threshold(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    # The evaluator scores every finished course at finalize (the offline provider's clean
    # output scores 1.0); a threshold above any score makes the second one fall short.
    settings.MONITORING_QUALITY_THRESHOLD = 0.7
    good = _submit(teacher, base_class, "Rainforests")
    settings.MONITORING_QUALITY_THRESHOLD = 1.01
    poor = _submit(teacher, base_class, "Savannahs")

    assert good.status == poor.status == JobStatus.SUCCEEDED
    assert good.quality_score is not None and good.quality_score >= 0.7
    alert = Alert.objects.get(kind=AlertKind.QUALITY_BELOW_THRESHOLD)
    assert alert.subject == f"job:{poor.pk}"
    assert alert.data == {"job_id": str(poor.pk), "score": poor.quality_score, "threshold": 1.01}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "subject"),
    [
        # The rate-limit and breaker paths raise through alert_raise (their own tests cover them).
        (AlertKind.RATE_LIMIT_VIOLATION, "user:42"),
        (AlertKind.CIRCUIT_BREAKER_OPENED, "model:gpt-4.1-mini"),
    ],
)
def test_it_deduplicates_alerts_of_one_kind_and_subject(kind: str, subject: str) -> None:
    first = alert_raise(kind=kind, subject=subject, message="one")
    again = alert_raise(kind=kind, subject=subject, message="two")
    other = alert_raise(kind=kind, subject=f"{subject}-other", message="three")

    assert again.pk == first.pk and again.count == 2 and again.message == "two"
    assert other.pk != first.pk
    assert Alert.objects.filter(kind=kind).count() == 2


@pytest.mark.django_db
def test_it_opens_a_new_alert_after_the_dedup_window(settings: Any) -> None:
    settings.MONITORING_ALERT_DEDUP_WINDOW_S = 600
    old = alert_raise(kind=AlertKind.CAPACITY_WARNING, subject="queue depth", message="old")
    Alert.objects.filter(pk=old.pk).update(last_seen_at=timezone.now() - timedelta(seconds=601))

    new = alert_raise(kind=AlertKind.CAPACITY_WARNING, subject="queue depth", message="new")

    old.refresh_from_db()
    assert new.pk != old.pk and new.count == 1
    assert old.closed_at is not None and old.acknowledged_at is None  # still for staff to see


@pytest.mark.django_db(transaction=True)
def test_it_counts_concurrent_raises_into_one_alert() -> None:
    threads, per_thread = 6, 5
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def raise_many() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                alert_raise(kind=AlertKind.CRITICAL_ERROR, subject="race", message="x")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=raise_many) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    alert = Alert.objects.get(subject="race")
    assert alert.count == threads * per_thread


@pytest.mark.django_db
def test_staff_acknowledge_alerts_in_the_admin_and_the_next_one_opens_anew() -> None:
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    alert = alert_raise(kind=AlertKind.CRITICAL_ERROR, subject="job failed", message="m")
    client = Client()
    client.force_login(staff)

    response = client.post(
        "/admin/monitoring/alert/",
        {"action": "acknowledge", "_selected_action": [alert.pk]},
        follow=True,
    )

    assert response.status_code == 200
    alert.refresh_from_db()
    assert alert.acknowledged_by == staff and alert.acknowledged_at and alert.closed_at
    again = alert_raise(kind=AlertKind.CRITICAL_ERROR, subject="job failed", message="m")
    assert again.pk != alert.pk


@pytest.mark.django_db
def test_it_mails_admins_once_per_new_alert_when_enabled(
    settings: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.MONITORING_ALERT_EMAIL = True
    settings.ADMINS = [("ops", "ops@example.com")]

    with django_capture_on_commit_callbacks(execute=True):
        alert = alert_raise(
            kind=AlertKind.CIRCUIT_BREAKER_OPENED, subject="model:x", message="opened"
        )
        alert_raise(kind=AlertKind.CIRCUIT_BREAKER_OPENED, subject="model:x", message="again")

    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["ops@example.com"]
    assert "model:x" in mailoutbox[0].subject
    alert.refresh_from_db()
    assert alert.emailed_at is not None


@pytest.mark.django_db
def test_it_raises_an_alert_when_a_circuit_breaker_opens_and_dedups_it(settings: Any) -> None:
    from generation.breaker import CircuitBreaker

    settings.COURSEGEN_BREAKER_MIN_CALLS = 2
    settings.COURSEGEN_BREAKER_FAILURE_RATE = 0.5
    breaker = CircuitBreaker("gpt-test")
    breaker.record_failure()
    breaker.record_failure()  # opens: the real code path sends breaker_changed
    breaker.record_success(probe=True)  # closes
    breaker.record_failure()
    breaker.record_failure()  # opens again within the window: the same alert counts twice

    alert = Alert.objects.get(kind=AlertKind.CIRCUIT_BREAKER_OPENED)
    assert alert.subject == "gpt-test" and alert.count == 2
    assert "2/2 calls failed" in alert.message
