"""One job's story across processes: log rows from the web side (this test process, through the
API) and from a real Celery worker share the job's correlation id, carried in task headers."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from generation.models import CourseGenerationJob
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog
from tests.worker import celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

WEB_SOURCE = f"{socket.gethostname()}:{os.getpid()}"


def _wait(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not met in time")


def test_web_and_worker_log_rows_share_the_jobs_correlation_id(
    tmp_path: Path, client_for: Any, teacher: Any, base_class: Any
) -> None:
    with celery_worker(
        tmp_path, concurrency=4, extra_env={"MONITORING_LOG_FLUSH_INTERVAL_S": "0.2"}
    ):
        response = client_for(teacher).post(
            "/api/jobs/",
            {"base_class": str(base_class.pk), "topic": "Auroras", "num_modules": 1},
            format="json",
        )
        assert response.status_code == 201
        job = CourseGenerationJob.objects.get(pk=response.data["id"])
        _wait(lambda: CourseGenerationJob.objects.get(pk=job.pk).is_terminal)
        flush_all()
        # The worker's writer thread flushes within its interval.
        _wait(lambda: CourseGenerationLog.objects.filter(event="job.succeeded", job=job).exists())
        _wait(
            lambda: CourseGenerationLog.objects.filter(
                event="celery.task",
                data__task="generation.tasks.finalize_job",
                correlation_id=job.correlation_id,
            ).exists()
        )

    story = CourseGenerationLog.objects.filter(correlation_id=job.correlation_id)
    web = story.filter(source=WEB_SOURCE)
    worker = story.exclude(source=WEB_SOURCE)
    assert set(web.values_list("event", flat=True)) == {"job.submitted"}
    assert {"job.started", "job.outline_done", "task.succeeded", "job.succeeded"} <= set(
        worker.values_list("event", flat=True)
    )
    # Rows with no job attached got the id only from the message headers: every delivered task.
    delivered = worker.filter(event="celery.task", job__isnull=True)
    generation = {
        "generation.tasks.dispatch_queue",
        "generation.tasks.run_outline",
        "generation.tasks.run_task",
        "generation.tasks.finalize_job",
    }
    judge = {"generation.tasks.judge_job", "generation.tasks.judge_lesson"}  # after finalize
    assert generation <= set(delivered.values_list("data__task", flat=True)) <= generation | judge
    assert delivered.filter(data__task="generation.tasks.run_task").count() == job.tasks.count() - 1
    # And nothing about this job was logged under another id.
    assert (
        not CourseGenerationLog.objects.filter(job=job)
        .exclude(correlation_id=job.correlation_id)
        .exists()
    )
