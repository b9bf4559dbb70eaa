"""The Batch API path (docs/batch.md) on the offline simulator's emulated Files and Batches
endpoints: outline first, then the rest; lines that fail or go unanswered are tried again; every
task is paid for once; a killed poller resumes; a cancelled job's answers are not applied."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Count, Q
from django.utils import timezone

from generation import services
from generation.batch_models import BatchRequestStatus, BatchStatus
from generation.models import (
    AttemptKind,
    BatchRequest,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    ProviderBatch,
    TaskStatus,
    Urgency,
)
from generation.providers import get_provider
from generation.providers.offline import OfflineProvider
from generation.providers.offline.batches import BatchEmulator
from generation.schemas import CourseRequest, TaskKind

pytestmark = pytest.mark.django_db(transaction=True)

REQUEST = CourseRequest(topic="Tides and the moon", num_modules=2, lessons_per_module=2)


@pytest.fixture(autouse=True)
def batch_settings(settings: Any, tmp_path: Any) -> Any:
    settings.COURSEGEN_OFFLINE_BATCH_DIR = str(tmp_path / "batches")
    settings.COURSEGEN_OFFLINE_BATCH_DELAY_S = 0.0
    settings.COURSEGEN_CACHE_ENABLED = False  # every task goes to the provider, batch or live
    return settings


def _submit(user: Any, base_class: Any, urgency: str = Urgency.BATCH) -> CourseGenerationJob:
    job = services.job_submit(user=user, base_class=base_class, request=REQUEST, urgency=urgency)
    job.refresh_from_db()
    return job


def _emulator() -> BatchEmulator:
    provider = get_provider()
    assert isinstance(provider, OfflineProvider) and provider.batches is not None
    return provider.batches


def _poll_until_done(job: CourseGenerationJob, rounds: int = 12) -> list[dict[str, int]]:
    reports = []
    for _ in range(rounds):
        reports.append(services.batch_poll().as_dict())
        job.refresh_from_db()
        if job.is_terminal:
            break
    return reports


def _paid_once(job: CourseGenerationJob) -> None:
    """Each task has exactly one accepted first answer in the ledger: a batch line's or, when
    its lines failed, one live first call; never both."""
    firsts = GenerationTask.objects.filter(job=job).annotate(
        answered=Count(
            "attempt_rows",
            filter=Q(attempt_rows__kind__in=[AttemptKind.BATCH, AttemptKind.FIRST]),
        )
    )
    assert {t.key + t.kind: t.answered for t in firsts} == {t.key + t.kind: 1 for t in firsts}


def test_a_batch_job_completes_through_the_emulated_batch_api(
    teacher: Any, base_class: Any
) -> None:
    job = _submit(teacher, base_class)
    assert job.status == JobStatus.RUNNING  # started, its outline waiting for a batch
    outline = job.tasks.get(kind=TaskKind.OUTLINE)
    assert outline.status == TaskStatus.PENDING
    assert BatchRequest.objects.get(task=outline).status == BatchRequestStatus.QUEUED
    assert services.running_job_count() == 0  # waiting for a batch holds no running slot

    reports = _poll_until_done(job)

    assert job.status == JobStatus.SUCCEEDED, (job.error, reports)
    assert job.course is not None
    # The outline's batch first, then the rest: one batch per model (a batch file has one).
    ended = ProviderBatch.objects.filter(status=BatchStatus.ENDED).order_by("pk")
    assert ended.count() == 3 and ended[0].request_total == 1
    assert set(BatchRequest.objects.values_list("status", flat=True)) == {"applied"}
    kinds = set(GenerationAttempt.objects.filter(task__job=job).values_list("kind", flat=True))
    assert AttemptKind.BATCH in kinds and AttemptKind.FIRST not in kinds
    _paid_once(job)


def test_a_batch_course_costs_half_the_live_one(teacher: Any, base_class: Any) -> None:
    live = _submit(teacher, base_class, urgency=Urgency.NOW)  # eager: done on return
    # The same prompts again: the simulated prompt cache would serve whole task paragraphs.
    get_provider.cache_clear()
    batch = _submit(teacher, base_class)
    _poll_until_done(batch)

    assert live.status == batch.status == JobStatus.SUCCEEDED
    ratio = batch.cost_usd / live.cost_usd
    assert abs(ratio - Decimal("0.5")) < Decimal("0.025"), ratio


def test_failed_and_unanswered_lines_are_retried_and_each_task_paid_once(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_OFFLINE_BATCH_FAILED = 0.2
    batch_settings.COURSEGEN_OFFLINE_BATCH_UNANSWERED = 0.1
    batch_settings.COURSEGEN_BATCH_MAX_TRIES = 2  # a second failure goes live
    jobs = [_submit(teacher, base_class) for _ in range(3)]

    for _ in range(20):
        services.batch_poll()
        for j in jobs:
            j.refresh_from_db()
        if all(j.is_terminal for j in jobs):
            break

    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3
    statuses = set(BatchRequest.objects.values_list("status", flat=True))
    assert {"applied", "retried"} <= statuses
    assert ProviderBatch.objects.filter(provider_status="expired").exists()
    for job in jobs:
        _paid_once(job)


def _answered_lines_paid_once(job: CourseGenerationJob) -> None:
    """Every line that brought an answer is one ledger row at the batch price, and a line's
    answer replayed by a later run of its task is not paid again."""
    lines = BatchRequest.objects.filter(
        task__job=job, live=False, status__in=["applied", "continued"]
    ).count()
    assert GenerationAttempt.objects.filter(task__job=job, batch=True).count() == lines


@pytest.mark.parametrize("repair", ["batch", "live"])
def test_a_repair_of_a_batch_answer_goes_live_or_into_the_next_batch_by_setting(
    teacher: Any, base_class: Any, batch_settings: Any, repair: str
) -> None:
    batch_settings.COURSEGEN_BATCH_REPAIR = repair
    # Invalid answers only: a truncated (malformed) answer repaired into the same truncation
    # stops its task by policy ("same validation errors again"), which with malformed=0.1 failed
    # the course for about one seed in four, whatever the repair setting.
    batch_settings.COURSEGEN_OFFLINE_FAULTS = "invalid=0.3"
    job = _submit(teacher, base_class)

    _poll_until_done(job, rounds=20)

    assert job.status == JobStatus.SUCCEEDED, job.error
    attempts = GenerationAttempt.objects.filter(task__job=job).exclude(kind="moderation")
    repairs = attempts.filter(kind__in=[AttemptKind.REASK, AttemptKind.PART])
    assert repairs.exists()  # some answers needed a repair
    continued = BatchRequest.objects.filter(task__job=job, status="continued")
    if repair == "batch":  # each repair a line of a later batch, at the batch price
        assert not attempts.filter(batch=False).exists()
        assert continued.exists() and not continued.filter(live=True).exists()
        assert BatchRequest.objects.filter(request__isnull=False, status="applied").exists()
    else:  # repaired at once by live calls, at list price
        assert set(repairs.values_list("batch", flat=True)) == {False}
        assert not continued.exists()
    _paid_once(job)
    _answered_lines_paid_once(job)


def test_a_failed_repair_line_goes_on_live_without_paying_the_earlier_answers_again(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    batch_settings.COURSEGEN_BATCH_REPAIR = "batch"
    batch_settings.COURSEGEN_BATCH_RETRY = "live"
    batch_settings.COURSEGEN_OFFLINE_FAULTS = "invalid=0.3"
    job = _submit(teacher, base_class)
    services.batch_poll()  # the outline's batch
    _emulator().unanswered = 1.0  # from now on every line goes unanswered

    _poll_until_done(job, rounds=20)

    assert job.status == JobStatus.SUCCEEDED, job.error
    live_rows = BatchRequest.objects.filter(task__job=job, live=True)
    assert live_rows.filter(status="applied").exists()  # repairs continued live in the poller
    for row in live_rows:
        assert row.prior  # with the answers taken before, replayed
    _paid_once(job)
    _answered_lines_paid_once(job)


def test_a_cancelled_jobs_answers_are_not_applied(teacher: Any, base_class: Any) -> None:
    job = _submit(teacher, base_class)
    services.batch_poll()  # the outline's batch: submitted, answered, applied; the rest queued
    emulator = _emulator()
    emulator.delay_s = 3600.0
    services.batch_poll()  # the rest submitted; they will not end for an hour
    assert BatchRequest.objects.filter(status=BatchRequestStatus.SUBMITTED).count() == 16

    services.job_cancel(job_id=job.pk)
    emulator.delay_s = 0.0
    services.batch_poll()  # its batches are cancelled at the provider, their lines dropped

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    applied = BatchRequest.objects.filter(status=BatchRequestStatus.APPLIED)
    assert list(applied.values_list("task__kind", flat=True)) == [TaskKind.OUTLINE]
    assert not BatchRequest.objects.filter(
        status__in=[BatchRequestStatus.SUBMITTED, BatchRequestStatus.ANSWERED]
    ).exists()
    assert (
        not GenerationAttempt.objects.filter(task__job=job)
        .exclude(task__kind=TaskKind.OUTLINE)
        .exists()
    )
    assert set(ProviderBatch.objects.values_list("provider_status", flat=True)) == {
        "completed",
        "cancelled",
    }


def test_a_poller_killed_mid_poll_is_resumed_by_the_next(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _submit(teacher, base_class)
    provider = get_provider()

    # Killed after uploading the file, before the batch was created: the row keeps the file.
    def killed(**kwargs: Any) -> Any:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(provider, "batch_create", killed)
    with pytest.raises(KeyboardInterrupt):
        services.batch_poll(worker="dead")
    monkeypatch.undo()
    batch = ProviderBatch.objects.get()
    assert batch.status == BatchStatus.SUBMITTING and batch.input_file_id
    ProviderBatch.objects.update(lease_expires_at=None)  # the dead poller's lease ran out

    # Killed while applying answers: the request stays answered, the task's lease runs out.
    services.batch_poll()  # submits the outline's batch, reads and applies it
    emulator = _emulator()
    emulator.delay_s = 3600.0
    services.batch_poll()  # submits the rest
    emulator.delay_s = 0.0
    original = services.runs.generate
    calls = {"n": 0}

    def dies_on_the_third(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the task is claimed, its answer not yet recorded
            raise KeyboardInterrupt("killed mid-apply")
        return original(*args, **kwargs)

    monkeypatch.setattr(services.runs, "generate", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        services.batch_poll(worker="dead")
    monkeypatch.undo()
    stuck = GenerationTask.objects.get(status=TaskStatus.RUNNING)  # claimed, never recorded
    assert BatchRequest.objects.get(task=stuck).status == BatchRequestStatus.ANSWERED
    ran_out = timezone.now() - timedelta(seconds=1)
    GenerationTask.objects.filter(pk=stuck.pk).update(lease_expires_at=ran_out)

    _poll_until_done(job)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert ProviderBatch.objects.exclude(provider_batch_id="").count() == 3  # none twice
    _paid_once(job)


def test_a_batch_created_but_not_recorded_before_a_kill_is_adopted_not_made_twice(
    teacher: Any, base_class: Any, monkeypatch: Any
) -> None:
    job = _submit(teacher, base_class)
    provider = get_provider()
    emulator = _emulator()
    real_upload, real_create = provider.batch_upload, provider.batch_create

    def killed_after(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)  # the provider has it; the answer never reaches the database
            raise KeyboardInterrupt("killed")

        return call

    # Killed after the upload (the file is at the provider, its id not on the row)
    monkeypatch.setattr(provider, "batch_upload", killed_after(real_upload))
    with pytest.raises(KeyboardInterrupt):
        services.batch_poll(worker="dead")
    monkeypatch.undo()
    ProviderBatch.objects.update(lease_expires_at=None)  # the dead poller's lease ran out
    # then the next poller killed after the creation (the batch runs at the provider)
    monkeypatch.setattr(provider, "batch_create", killed_after(real_create))
    with pytest.raises(KeyboardInterrupt):
        services.batch_poll(worker="dead-too")
    monkeypatch.undo()
    row = ProviderBatch.objects.get()
    assert row.status == BatchStatus.SUBMITTING and row.provider_batch_id == ""
    assert emulator.count() == 1 and row.client_key
    ProviderBatch.objects.update(lease_expires_at=None)

    # Killed after creating each of the other batches too, once each
    emulator.delay_s = 3600.0
    services.batch_poll()  # adopts the outline's batch (in progress for an hour)
    row.refresh_from_db()
    assert row.status == BatchStatus.SUBMITTED and row.provider_batch_id
    emulator.delay_s = 0.0
    services.batch_poll()  # the outline applied; the rest queued
    monkeypatch.setattr(provider, "batch_create", killed_after(real_create))
    with pytest.raises(KeyboardInterrupt):
        services.batch_poll(worker="dead")
    monkeypatch.undo()
    ProviderBatch.objects.update(lease_expires_at=None)

    _poll_until_done(job)

    assert job.status == JobStatus.SUCCEEDED, job.error
    recorded = set(ProviderBatch.objects.values_list("provider_batch_id", flat=True))
    assert emulator.count() == len(recorded) == 3  # every batch made once, and every one known
    uploads = list((emulator.root / "uploads").glob("*.json"))
    assert len(uploads) == 3  # the file uploaded before the first kill was found, not re-sent
    assert set(BatchRequest.objects.values_list("status", flat=True)) == {"applied"}
    _paid_once(job)


def test_the_admin_shows_batches_and_a_job_waiting_for_one(
    teacher: Any, base_class: Any, client_for: Any
) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    job = _submit(teacher, base_class)
    _emulator().delay_s = 3600.0
    services.batch_poll()
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)

    page = client.get(f"/admin/generation/coursegenerationjob/{job.pk}/change/").content.decode()
    batch = ProviderBatch.objects.get()
    listing = client.get("/admin/generation/providerbatch/").content.decode()
    detail = client.get(f"/admin/generation/providerbatch/{batch.pk}/change/").content.decode()
    body = client_for(teacher).get(f"/api/jobs/{job.pk}/").json()

    assert "waiting for batch" in page and "1 at the provider" in page
    assert batch.provider_batch_id in listing and "in_progress" in listing
    assert f"/admin/generation/coursegenerationjob/{job.pk}/change/" in detail
    assert f"task-{job.tasks.get().pk}-try-1" in detail
    assert body["urgency"] == "batch" and body["cost_breakdown"]["batch_saving_usd"] == "0.000000"


def test_generate_course_by_batch_prints_half_the_live_cost_in_its_json(
    teacher: Any, base_class: Any
) -> None:
    import io
    import json

    from django.core.management import call_command

    def run(*extra: str) -> dict[str, Any]:
        get_provider.cache_clear()  # each run its own simulated prompt cache, as in its own process
        out = io.StringIO()
        args = ["--user", teacher.username, "--topic", "Rivers and valleys", "--modules", "1"]
        call_command("generate_course", *args, "--lessons", "2", "--json", *extra, stdout=out)
        return dict(json.loads(out.getvalue().strip().splitlines()[-1]))

    live = run()
    batch = run("--urgency", "batch")

    assert (live["status"], live["urgency"]) == ("succeeded", "now")
    assert (batch["status"], batch["urgency"]) == ("succeeded", "batch")
    assert abs(batch["cost_usd"] / live["cost_usd"] - 0.5) <= 0.025
    assert batch["attempts"]["batch"]["ok"] == batch["tasks"]
    assert batch["first_attempt_valid_share"] == 1.0
    assert abs(batch["batch_saving_usd"] - batch["cost_usd"]) < 1e-6  # half price: saved as much


def test_the_offline_provider_reaches_its_batch_endpoints_through_the_sdk_over_loopback(
    teacher: Any, base_class: Any
) -> None:
    from generation.providers.offline import batch_http

    job = _submit(teacher, base_class)
    _poll_until_done(job)

    assert job.status == JobStatus.SUCCEEDED
    server = batch_http._servers[str(_emulator().root)]
    assert server.base_url.startswith("http://127.0.0.1:")
    batch_ids = set(ProviderBatch.objects.values_list("provider_batch_id", flat=True))
    served = {(method, path.split("/")[2]) for method, path in server.served}
    assert {("POST", "files"), ("POST", "batches"), ("GET", "batches")} <= served
    retrieved = {path.split("/")[3] for method, path in server.served if path.count("/") == 3}
    assert batch_ids <= retrieved  # every batch was retrieved over HTTP by the SDK


def test_the_offline_provider_calls_its_emulator_directly_without_the_loopback(
    teacher: Any, base_class: Any, batch_settings: Any
) -> None:
    from generation.providers.offline import batch_http

    batch_settings.COURSEGEN_OFFLINE_BATCH_HTTP = False
    get_provider.cache_clear()
    job = _submit(teacher, base_class)
    _poll_until_done(job)

    assert job.status == JobStatus.SUCCEEDED
    assert str(_emulator().root) not in batch_http._servers  # no server was started for it
