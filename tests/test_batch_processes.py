"""A real worker and a real beat, killed with SIGKILL in the middle of a batch poll (after the
provider created a batch, before its id reached the database), are replaced; the new ones adopt
that batch and the job completes, each task paid once and no batch made twice (docs/batch.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from generation import services
from generation.batch_models import BatchRequestStatus, BatchStatus
from generation.models import BatchRequest, CourseGenerationJob, JobStatus, ProviderBatch, Urgency
from generation.providers.offline.batches import BatchEmulator
from generation.schemas import CourseRequest
from tests.test_batch import _paid_once
from tests.worker import celery_beat, celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
CRASH = "tests.batch_crash"  # the doomed worker stops after a batch is created, before recording it


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not met")


def test_a_worker_and_beat_killed_mid_poll_resume_and_the_job_completes_paid_once(
    tmp_path: Path, teacher: Any, base_class: Any, settings: Any
) -> None:
    batches = tmp_path / "batches"
    mark = tmp_path / "crashed"
    env = {
        "COURSEGEN_OFFLINE_BATCH_DIR": str(batches),
        "COURSEGEN_OFFLINE_BATCH_DELAY_S": "1",
        "COURSEGEN_BATCH_POLL_INTERVAL_S": "1",
        "COURSEGEN_BATCH_LEASE_S": "5",  # the dead poller's claim runs out soon
        "COURSEGEN_CACHE_ENABLED": "false",
        "BATCH_CRASH_AT": "2",  # the first batch after the outline's
        "BATCH_CRASH_MARK": str(mark),
    }
    settings.COURSEGEN_CACHE_ENABLED = False
    request = CourseRequest(topic="Tides and the moon", num_modules=2, lessons_per_module=2)

    # Given a batch job polled by a real worker and beat
    with (
        celery_worker(tmp_path, name="doomed", extra_env=env, preload=CRASH) as doomed,
        celery_beat(tmp_path, name="doomed-beat", extra_env=env) as beat,
    ):
        job = services.job_submit(
            user=teacher, base_class=base_class, request=request, urgency=Urgency.BATCH
        )
        # When both are killed (SIGKILL) once the provider has created a batch whose id the
        # poller has not recorded yet
        _wait_for(mark.exists, timeout=120)
        for process in (doomed.process, beat.process):
            process.kill()
            process.wait()
    orphan = mark.read_text()
    assert not ProviderBatch.objects.filter(provider_batch_id=orphan).exists()
    assert ProviderBatch.objects.filter(status=BatchStatus.SUBMITTING).exists()

    # Then a new worker and beat adopt it and finish the job
    env.pop("BATCH_CRASH_AT")
    with (
        celery_worker(tmp_path, name="healthy", extra_env=env, flush=False) as healthy,
        celery_beat(tmp_path, name="healthy-beat", extra_env=env),
    ):
        _wait_for(lambda: CourseGenerationJob.objects.get(pk=job.pk).is_terminal, timeout=180)
        job.refresh_from_db()
        log = healthy.log()

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert "adopted " + orphan in log
    emulator = BatchEmulator(batches, delay_s=0, failed=0, unanswered=0, seed=0)
    recorded = set(ProviderBatch.objects.values_list("provider_batch_id", flat=True))
    assert orphan in recorded
    assert emulator.count() == len(recorded) == 3  # one per model after the outline's; none twice
    assert set(BatchRequest.objects.values_list("status", flat=True)) == {
        BatchRequestStatus.APPLIED
    }
    _paid_once(job)
