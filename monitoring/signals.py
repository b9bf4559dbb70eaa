"""Celery signal handlers: carry the correlation id in task headers and log each delivered task.

Publishing copies the current correlation id into a message header; a worker restores it for the
time the task runs (the threads pool reuses threads, so it is reset afterwards). Eager tasks run
inside their caller's context and need neither. Also the circuit breaker's signal, whose changes
become alerts.
"""

from __future__ import annotations

import threading
import time
from contextvars import Token
from typing import Any

from celery.signals import (
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_shutdown,
)
from django.conf import settings
from django.dispatch import Signal, receiver

from monitoring.correlation import (
    CELERY_HEADER,
    get_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)
from monitoring.logs import flush_all, log_event
from monitoring.models import AlertKind, AlertSeverity

# Sent by the circuit breaker (generation/breaker.py) when a model's breaker opens or closes;
# kwargs: model (str), state (BreakerState), reason (str). Defined here, so the sender imports
# monitoring and monitoring imports no other app.
breaker_changed = Signal()

_running: dict[tuple[str, int], tuple[Token[str | None], float]] = {}


@before_task_publish.connect
def add_correlation_header(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    cid = get_correlation_id()
    if cid and headers is not None and not headers.get(CELERY_HEADER):
        headers[CELERY_HEADER] = cid


@task_prerun.connect
def restore_correlation_id(task_id: str, task: Any, **kwargs: Any) -> None:
    if task.request.is_eager:
        return
    # Set even when absent (beat, or published outside any request), so nothing stale remains.
    token = set_correlation_id(task.request.get(CELERY_HEADER))
    _running[(task_id, threading.get_ident())] = (token, time.monotonic())


@task_postrun.connect
def clear_correlation_id(task_id: str, task: Any, state: str | None = None, **kwargs: Any) -> None:
    entry = _running.pop((task_id, threading.get_ident()), None)
    if entry is None:
        return
    token, started = entry
    try:
        # Periodic housekeeping (beat's dispatch every few seconds) has no story to join: only
        # its failures are worth a row.
        if settings.MONITORING_LOG_CELERY_TASKS and (get_correlation_id() or state == "FAILURE"):
            elapsed_ms = (time.monotonic() - started) * 1000
            log_event(
                "celery.task",
                f"{task.name} {state or 'done'} in {elapsed_ms:.0f} ms",
                level="error" if state == "FAILURE" else "info",
                duration_ms=elapsed_ms,
                data={
                    "task": task.name,
                    "task_id": task_id,
                    "state": state,
                    "worker": task.request.hostname,
                },
            )
    finally:
        reset_correlation_id(token)


@worker_process_shutdown.connect
@worker_shutdown.connect
def flush_logs_on_shutdown(**kwargs: Any) -> None:
    flush_all()


@receiver(breaker_changed)
def alert_on_breaker_change(*, model: str, state: str, reason: str, **kwargs: Any) -> None:
    """A breaker that opens is an alert; one that closes is logged (the alert stays to be acked)."""
    from monitoring.services import alert_raise

    if state == "open":
        alert_raise(
            kind=AlertKind.CIRCUIT_BREAKER_OPENED,
            subject=model,
            message=f"circuit breaker opened for {model}: {reason}",
            severity=AlertSeverity.CRITICAL,
            data={"model": model, "reason": reason},
        )
    else:
        log_event(
            "breaker.closed", f"circuit breaker closed for {model}: {reason}", data={"model": model}
        )
