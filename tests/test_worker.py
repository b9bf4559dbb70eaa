"""A real Celery worker (threads pool) runs a whole course chord through Redis."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from generation import services
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus
from generation.schemas import CourseRequest, TaskKind
from generation.tasks import run_task
from tests.worker import celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _wait_for_terminal(job_id: Any, timeout: float = 90) -> CourseGenerationJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = CourseGenerationJob.objects.get(pk=job_id)
        if job.is_terminal:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_it_runs_a_full_course_chord_on_a_real_worker(
    tmp_path: Path, teacher: Any, base_class: Any
) -> None:
    call_log = tmp_path / "calls.log"
    with celery_worker(tmp_path, extra_env={"COURSEGEN_OFFLINE_CALL_LOG": str(call_log)}) as worker:
        job = services.job_submit(
            user=teacher,
            base_class=base_class,
            request=CourseRequest(topic="The water cycle", num_modules=4, lessons_per_module=3),
        )
        job = _wait_for_terminal(job.pk)

        assert job.status == JobStatus.SUCCEEDED, job.error
        tasks = GenerationTask.objects.filter(job=job)
        assert tasks.count() == 43
        assert set(tasks.values_list("status", flat=True)) == {TaskStatus.SUCCEEDED}
        assert job.course is not None and len(job.course["modules"]) == 4
        worker.wait_for_log("generation.tasks.finalize_job[", count=2)  # received + succeeded
        assert len(re.findall(r"finalize_job\[[^\]]+\] succeeded", worker.log())) == 1
        calls = _calls(call_log)
        assert len(calls) == 43  # one provider call per task

        # A repeated message for a succeeded task must not reach the provider again.
        section = tasks.get(kind=TaskKind.LESSON_SECTION, key="m2.l3")
        run_task.apply_async(args=(section.pk,))
        worker.wait_for_log("generation.tasks.run_task[", count=2 * 42 + 2)

        assert len(_calls(call_log)) == 43
        assert [
            c
            for c in _calls(call_log)
            if c["task_key"] == "m2.l3" and c["kind"] == "lesson_section"
        ]
        section.refresh_from_db()
        assert section.runs == 1 and section.attempts == 1
