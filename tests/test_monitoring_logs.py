"""course_generation_logs: the handler, log_event, the key events of a job, correlation, pruning."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from generation import services
from generation.models import CourseGenerationJob, GenerationTask, JobStatus
from generation.schemas import CourseRequest
from monitoring import logs
from monitoring.correlation import correlation_scope
from monitoring.logs import DatabaseLogHandler, flush_all, log_event
from monitoring.models import CourseGenerationLog


def _handler(**kwargs: Any) -> DatabaseLogHandler:
    # A long interval: the background thread never flushes during the test; flush() does.
    handler = DatabaseLogHandler(flush_interval=3600, batch_size=10_000, **kwargs)
    return handler


def _logger(handler: DatabaseLogHandler, name: str = "coursegen.test") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


@pytest.fixture
def handler() -> Any:
    handler = _handler()
    yield handler
    logging.getLogger("coursegen.test").handlers = []
    handler.close()


def _submit(user: Any, base_class: Any, **overrides: Any) -> CourseGenerationJob:
    request = CourseRequest(topic="Glaciers and ice ages", **overrides)
    job = services.job_submit(user=user, base_class=base_class, request=request)
    return CourseGenerationJob.objects.get(pk=job.pk)


@pytest.mark.django_db
def test_discard_drops_what_is_buffered_and_writes_nothing(handler: DatabaseLogHandler) -> None:
    logger = _logger(handler)
    logger.info("one", extra={"event": "test.discarded"})
    logger.info("two", extra={"event": "test.discarded"})

    assert handler.discard() == 2
    handler.flush()

    assert handler.discard() == 0
    assert not CourseGenerationLog.objects.filter(event="test.discarded").exists()


@pytest.mark.django_db
def test_it_buffers_records_and_writes_them_in_one_batch(
    handler: DatabaseLogHandler,
    teacher: Any,
    django_assert_num_queries: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copies: list[int] = []
    copy_rows = logs._copy_rows

    def counted(rows: list[dict[str, Any]]) -> None:
        copies.append(len(rows))
        copy_rows(rows)

    monkeypatch.setattr(logs, "_copy_rows", counted)
    logger = _logger(handler)
    cid = uuid4()

    with django_assert_num_queries(0), correlation_scope(cid):
        for n in range(50):
            log_event(
                "test.step",
                f"step {n}",
                level="warning",
                user=teacher,
                data={"n": n, "at": timezone.now()},
                duration_ms=12.6,
                logger=logger,
            )
    assert not CourseGenerationLog.objects.filter(correlation_id=cid).exists()

    with CaptureQueriesContext(connection) as queries:
        handler.flush()
    assert copies == [50]  # one COPY for all 50 rows (psycopg's, not seen by Django) ...
    assert not [q for q in queries if "INSERT" in q["sql"]]  # ... and no INSERT

    rows = CourseGenerationLog.objects.filter(correlation_id=cid).order_by("created_at", "pk")
    assert rows.count() == 50
    first = rows[0]
    assert (first.level, first.event, first.message) == ("warning", "test.step", "step 0")
    assert first.user_id == teacher.pk and first.duration_ms == 13
    assert first.data["n"] == 0 and isinstance(first.data["at"], str)
    assert first.logger == "coursegen.test"


@pytest.mark.django_db
def test_it_never_raises_into_the_caller_and_keeps_its_transaction_usable(
    handler: DatabaseLogHandler, monkeypatch: Any, capsys: Any
) -> None:
    logger = _logger(handler)

    def broken(*args: Any, **kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO no_such_table VALUES (1)")

    monkeypatch.setattr(logs, "_copy_rows", broken)
    with transaction.atomic():
        logger.error("this row cannot be written")
        handler.flush()  # fails inside the caller's transaction ...
        assert CourseGenerationJob.objects.count() == 0  # ... which still works

    assert handler.failed == 1
    assert "dropped 1 log rows" in capsys.readouterr().err


@pytest.mark.django_db
def test_text_and_data_that_copy_would_escape_arrive_as_logged(
    handler: DatabaseLogHandler, teacher: Any, base_class: Any
) -> None:
    logger = _logger(handler)
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)
    text = 'tab\there, line\nbreak, back\\slash \\N, "quotes", \u00e9\u4e2d\U0001f331 and \\.'
    log_event("test.odd", text, job=job, data={"text": text, "nested": [None, 1.5]}, logger=logger)
    logger.info("\\N")  # COPY's null marker as the whole message: still text

    handler.flush()

    odd = CourseGenerationLog.objects.get(event="test.odd")
    assert odd.message == text and odd.data == {"text": text, "nested": [None, 1.5]}
    assert (odd.job_id, odd.organisation_id) == (job.pk, job.organisation_id)
    assert odd.correlation_id == job.correlation_id and odd.task_id is None
    assert CourseGenerationLog.objects.get(event="coursegen.test", message="\\N").data == {}


@pytest.mark.django_db
def test_it_records_exceptions_and_the_context_correlation_id(
    handler: DatabaseLogHandler,
) -> None:
    logger = _logger(handler)
    cid = uuid4()

    with correlation_scope(cid):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("task crashed")
    handler.flush()

    row = CourseGenerationLog.objects.get(correlation_id=cid)
    assert row.level == "error" and row.event == "coursegen.test"
    assert "ValueError: boom" in row.data["exception"]


@pytest.mark.django_db(transaction=True)
def test_it_logs_the_key_points_of_a_job_under_its_correlation_id(
    teacher: Any, base_class: Any
) -> None:
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)
    flush_all()

    rows = CourseGenerationLog.objects.filter(job=job)
    events = list(rows.values_list("event", flat=True))
    assert {"job.submitted", "job.started", "job.outline_done", "job.succeeded"} <= set(events)
    assert events.count("task.succeeded") == GenerationTask.objects.filter(job=job).count()
    assert set(rows.values_list("correlation_id", flat=True)) == {job.correlation_id}
    assert set(rows.values_list("organisation_id", flat=True)) == {job.organisation_id}
    submitted = rows.get(event="job.submitted")
    assert submitted.user_id == teacher.pk


@pytest.mark.django_db(transaction=True)
def test_it_logs_failed_tasks_and_jobs_as_errors(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # invalid replies can be combined
    job = _submit(teacher, base_class, num_modules=1, lessons_per_module=1)
    assert job.status == JobStatus.FAILED
    flush_all()

    failed_task = CourseGenerationLog.objects.get(job=job, event="task.failed")
    assert failed_task.level == "error" and failed_task.task_id is not None
    assert failed_task.data["validation_errors"]
    assert CourseGenerationLog.objects.get(job=job, event="job.failed").level == "error"


@pytest.mark.django_db(transaction=True)
def test_it_answers_each_request_with_the_correlation_id_it_logged_under(
    client_for: Any, teacher: Any, base_class: Any
) -> None:
    response = client_for(teacher).post(
        "/api/jobs/",
        {"base_class": str(base_class.pk), "topic": "Tides", "num_modules": 1},
        format="json",
        HTTP_X_CORRELATION_ID="not-a-uuid",
    )

    assert response.status_code == 201
    job = CourseGenerationJob.objects.get(pk=response.data["id"])
    assert response["X-Correlation-ID"] == str(job.correlation_id)
    flush_all()
    assert CourseGenerationLog.objects.get(event="job.submitted", job=job).correlation_id == (
        job.correlation_id
    )


@pytest.mark.django_db(transaction=True)
def test_a_callers_correlation_id_cannot_write_into_another_jobs_story(
    client_for: Any, teacher: Any, base_class: Any, make_member: Any
) -> None:
    student = make_member(Role.STUDENT)
    job = CourseGenerationJob.objects.get(
        pk=client_for(teacher)
        .post("/api/jobs/", {"base_class": str(base_class.pk), "topic": "Tides"}, format="json")
        .data["id"]
    )
    flush_all()
    before = CourseGenerationLog.objects.filter(correlation_id=job.correlation_id).count()

    # A student who learnt the job's correlation id sends it with a request that logs rows.
    response = client_for(student).post(
        "/api/jobs/",
        {"base_class": str(base_class.pk), "topic": "Waves"},
        format="json",
        HTTP_X_CORRELATION_ID=str(job.correlation_id),
    )

    assert response.status_code == 201
    assert UUID(response["X-Correlation-ID"]) != job.correlation_id
    assert response["X-Client-Correlation-ID"] == str(job.correlation_id)
    flush_all()
    assert CourseGenerationLog.objects.filter(correlation_id=job.correlation_id).count() == before
    theirs = CourseGenerationLog.objects.filter(correlation_id=response["X-Correlation-ID"])
    assert theirs.exists()
    assert any(r.data.get("client_correlation_id") == str(job.correlation_id) for r in theirs)


@pytest.mark.django_db
def test_it_prunes_old_rows_in_batches(capsys: Any) -> None:
    now = timezone.now()
    CourseGenerationLog.objects.bulk_create(
        [
            CourseGenerationLog(level="info", event="old", created_at=now - timedelta(days=40))
            for _ in range(5)
        ]
        + [CourseGenerationLog(level="info", event="new", created_at=now - timedelta(days=2))]
    )

    call_command("prune_logs", "--days", "30", "--batch-size", "2")

    assert not CourseGenerationLog.objects.filter(event="old").exists()
    assert CourseGenerationLog.objects.filter(event="new").count() == 1
    assert "deleted 5 log rows" in capsys.readouterr().out
