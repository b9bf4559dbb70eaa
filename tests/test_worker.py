"""A real Celery worker (threads pool) runs a whole course chord through Redis, and through
RabbitMQ (each test runs on both brokers: the `broker_env` fixture)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from generation import recovery, services
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
    """The course's own generation calls in the call log. Left out: what the quality loop adds
    after finalize, the LLM judge's calls (kind "judge") and the regenerations it asks for when
    a simulated verdict falls below its thresholds (a "variant" number; CI saw one make 44)."""
    calls = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [call for call in calls if call["kind"] != "judge" and call["variant"] is None]


def _thread_policies(pid: int) -> list[int]:
    policies = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            policies.append(os.sched_getscheduler(int(tid)))
        except ProcessLookupError:
            continue  # ended meanwhile
    return policies


def test_it_runs_a_full_course_chord_on_a_real_worker(
    tmp_path: Path, teacher: Any, base_class: Any, broker_env: dict[str, str]
) -> None:
    call_log = tmp_path / "calls.log"
    env = {**broker_env, "COURSEGEN_OFFLINE_CALL_LOG": str(call_log), "WORKER_SCHED_BATCH": "true"}
    with celery_worker(tmp_path, extra_env=env) as worker:
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
        if hasattr(os, "SCHED_BATCH"):  # WORKER_SCHED_BATCH: every thread, the pool's too
            policies = _thread_policies(worker.process.pid)
            assert len(policies) > 8 and set(policies) == {os.SCHED_BATCH}, policies
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
        assert section.runs == 1 and section.attempts == 2  # one call and its moderation


def test_a_gevent_worker_holds_more_calls_in_flight_than_database_connections(
    tmp_path: Path, teacher: Any, base_class: Any, broker_env: dict[str, str]
) -> None:
    """A gevent worker (docs/performance.md#worker-pool): a task gives its pooled connection back
    while its provider call runs, so three courses' calls overlap on a worker whose pool has two
    connections."""
    env = {
        **broker_env,
        "COURSEGEN_OFFLINE_LATENCY_SCALE": "0.2",  # calls of ~1.5 s: tasks overlap
        "DATABASE_POOL": "true",
        "DATABASE_POOL_MIN_SIZE": "1",
        "DATABASE_POOL_MAX_SIZE": "2",
        "DATABASE_POOL_TIMEOUT": "60",
    }
    with celery_worker(tmp_path, pool="gevent", concurrency=200, extra_env=env):
        jobs = [
            services.job_submit(
                user=teacher,
                base_class=base_class,
                request=CourseRequest(topic=topic, num_modules=4, lessons_per_module=3),
            )
            for topic in ("Volcanoes", "Tides", "Photosynthesis")
        ]
        finished = [_wait_for_terminal(job.pk, timeout=120) for job in jobs]

    assert [job.status for job in finished] == [JobStatus.SUCCEEDED] * 3, [
        job.error for job in finished
    ]
    spans = GenerationTask.objects.filter(job__in=jobs).values_list("started_at", "finished_at")
    edges = sorted(e for start, end in spans for e in ((start, 1), (end, -1)))
    running = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert max(running) > 10  # far more tasks in their calls at once than the 2 connections


SLOW_WORKER = {
    "COURSEGEN_GLOBAL_MAX_RUNNING_JOBS": "1",
    "COURSEGEN_OFFLINE_LATENCY_SCALE": "1.0",  # calls take seconds: the kill lands mid-task
    "COURSEGEN_TASK_DEADLINE_S": "2",
    "COURSEGEN_TASK_LEASE_S": "3",
}


def test_it_frees_a_killed_workers_slot_after_the_lease_and_starts_the_next_job(
    tmp_path: Path, teacher: Any, base_class: Any, settings: Any, broker_env: dict[str, str]
) -> None:
    # Given a global cap of one running job, and a second job waiting behind the first
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 1
    settings.COURSEGEN_REDISPATCH_AFTER_S = 1
    request = CourseRequest(topic="Glaciers", num_modules=1, lessons_per_module=1)
    with celery_worker(tmp_path, name="doomed", extra_env={**broker_env, **SLOW_WORKER}) as doomed:
        first = services.job_submit(user=teacher, base_class=base_class, request=request)
        second = services.job_submit(user=teacher, base_class=base_class, request=request)
        _wait_for(lambda: GenerationTask.objects.filter(job=first, status="running").exists())
        # When the worker holding the running job's slot dies mid-task
        doomed.process.kill()
        doomed.process.wait()
    assert CourseGenerationJob.objects.get(pk=second.pk).status == JobStatus.QUEUED

    healthy_env = {**broker_env, "COURSEGEN_GLOBAL_MAX_RUNNING_JOBS": "1"}
    with celery_worker(tmp_path, name="healthy", flush=False, extra_env=healthy_env):
        # Then, once the lease has expired, the reconciler (beat's job) re-sends the lost work
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            recovery.reconcile()
            if CourseGenerationJob.objects.get(pk=second.pk).is_terminal:
                break
            time.sleep(1)

    first_job = CourseGenerationJob.objects.get(pk=first.pk)
    second_job = CourseGenerationJob.objects.get(pk=second.pk)
    assert first_job.status == JobStatus.SUCCEEDED, first_job.error
    assert second_job.status == JobStatus.SUCCEEDED, second_job.error
    assert second_job.started_at is not None and first_job.finished_at is not None
    assert second_job.started_at >= first_job.finished_at  # the slot passed on, never shared
    assert GenerationTask.objects.filter(job=first, runs__gt=1).exists()  # work was resumed


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met")
