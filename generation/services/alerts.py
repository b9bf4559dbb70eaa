"""The alerts course generation raises through monitoring: a job's outcome (critical when it
failed), a course scored below the quality threshold, and running jobs or the queue near the
global cap. Monitoring stores, deduplicates and mails alerts; what deserves one is decided here,
by the app that knows what a job is (as ratelimits and the circuit breaker do for theirs)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from generation.models import CourseGenerationJob
from generation.selectors import capacity_now
from monitoring.logs import log_event
from monitoring.models import Alert, AlertKind, AlertSeverity
from monitoring.services import alert_raise

# The logger monitoring's own records use: a failure here never raises an alert (no loops).
logger = logging.getLogger("coursegen.monitoring")


def job_outcome_record(*, job: CourseGenerationJob) -> None:
    """After job_finalize: log the outcome, alert on failure, check quality. Never raises."""
    try:
        failed = job.status == "failed"
        log_event(
            f"job.{job.status}",
            f"job {job.id} {job.status}: cost ${job.cost_usd}, {job.output_tokens} output tokens",
            level="error" if failed else "info",
            job=job,
            duration_ms=job.duration_s * 1000 if job.duration_s is not None else None,
            data={"cost_usd": job.cost_usd, "output_tokens": job.output_tokens, "error": job.error},
        )
        if failed:
            alert_raise(
                kind=AlertKind.CRITICAL_ERROR,
                subject="job failed",
                message=f"Job {job.id} ({job.topic}) failed: {job.error[:1000]}",
                severity=AlertSeverity.CRITICAL,
                data={"job_id": str(job.id), "correlation_id": str(job.correlation_id)},
            )
        elif job.status == "succeeded":
            quality_check(job=job)
    except Exception:
        logger.exception("monitoring could not record the outcome of job %s", job.id)


def capacity_check() -> list[Alert]:
    """Warn when running jobs or the queue reach MONITORING_CAPACITY_WARN_FRACTION of the cap."""
    cap = settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS
    threshold = settings.MONITORING_CAPACITY_WARN_FRACTION * cap
    now = capacity_now()
    raised = []
    for subject, count in (("running jobs", now["running"]), ("queue depth", now["queued"])):
        if count >= threshold:
            raised.append(
                alert_raise(
                    kind=AlertKind.CAPACITY_WARNING,
                    subject=subject,
                    message=f"{subject}: {count} against a global cap of {cap} running jobs",
                    data={"count": count, "cap": cap, "threshold": threshold},
                )
            )
    return raised


def quality_check(*, job: CourseGenerationJob, score: float | None = None) -> Alert | None:
    """Alert when the job's score (the evaluator's, recorded at finalize) is below threshold."""
    score = job.quality_score if score is None else score
    threshold = settings.MONITORING_QUALITY_THRESHOLD
    if score is None or score >= threshold:
        return None
    return alert_raise(
        kind=AlertKind.QUALITY_BELOW_THRESHOLD,
        subject=f"job:{job.id}",
        message=f"Job {job.id} ({job.topic}) scored {score:.2f}, below {threshold:.2f}",
        data={"job_id": str(job.id), "score": score, "threshold": threshold},
        organisation_id=job.organisation_id,  # its administrators see it (docs/admin.md)
    )


def content_flagged(
    *, subject: str, message: str, data: dict[str, object], organisation_id: Any = None
) -> Alert | None:
    """Alert staff to content moderation flagged: a refused request, or generated output held
    for their review (docs/safety.md). Never raises: the flag itself is already recorded."""
    try:
        return alert_raise(
            kind=AlertKind.CONTENT_FLAGGED,
            subject=subject,
            message=message[:1000],
            data=data,
            organisation_id=organisation_id,
        )
    except Exception:
        logger.exception("could not raise the content-flagged alert for %s", subject)
        return None
