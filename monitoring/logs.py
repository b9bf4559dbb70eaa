"""Structured log events in PostgreSQL (course_generation_logs) through the logging module.

`DatabaseLogHandler` is attached to the "coursegen" logger tree in settings.LOGGING. Emitting a
record only turns it into a plain dict and appends it to an in-memory buffer (no I/O on the
caller's thread); a daemon thread bulk-inserts the buffer every `flush_interval` seconds, or
sooner when `batch_size` records wait. The handler never raises into the caller and never logs
its own failures through logging (no recursion): a failed write drops that batch and says so on
stderr, at most once a minute.

`log_event` is the structured way to log: an event name plus the job, task, user, data and
duration that the row's columns hold.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.core.serializers.json import DjangoJSONEncoder

from monitoring.correlation import get_client_correlation_id, get_correlation_id

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


# What a row needs of a job and of a task (generation's CourseGenerationJob and GenerationTask):
# described here, because monitoring imports no other app.
class JobRef(Protocol):
    @property
    def pk(self) -> Any: ...
    @property
    def organisation_id(self) -> Any: ...
    @property
    def correlation_id(self) -> Any: ...


class TaskRef(Protocol):
    @property
    def pk(self) -> Any: ...
    @property
    def job_id(self) -> Any: ...


EVENT_LOGGER = logging.getLogger("coursegen.events")
# Records from these loggers never raise critical-error alerts themselves (no alert loops).
INTERNAL_LOGGER_PREFIX = "coursegen.monitoring"
LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
LEVEL_NUMBERS = {name: number for number, name in LEVELS.items()}
_SOURCE = f"{socket.gethostname()}:{os.getpid()}"
_handlers: list[DatabaseLogHandler] = []
# Called with each critical row once it is written: monitoring.apps registers the alert for it
# (monitoring/services.py), which logs through this module, so this module cannot import it.
CRITICAL_ROW_HOOKS: list[Callable[..., object]] = []


def level_name(levelno: int) -> str:
    for number in sorted(LEVELS, reverse=True):
        if levelno >= number:
            return LEVELS[number]
    return "debug"


def log_event(
    event: str,
    message: str,
    *,
    level: str = "info",
    job: JobRef | None = None,
    task: TaskRef | None = None,
    user: AbstractBaseUser | None = None,
    data: dict[str, Any] | None = None,
    duration_ms: int | float | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Log one structured event; a row in course_generation_logs and a console line."""
    fields: dict[str, Any] = {"event": event, "data": dict(data or {})}
    if duration_ms is not None:
        fields["duration_ms"] = round(duration_ms)
    if job is not None:
        fields.update(
            job_id=job.pk,
            organisation_id=job.organisation_id,
            correlation_id=str(job.correlation_id),
        )
    if task is not None:
        fields["task_id"] = task.pk
        fields.setdefault("job_id", task.job_id)
    if user is not None:
        fields["user_id"] = user.pk
    (logger or EVENT_LOGGER).log(LEVEL_NUMBERS[level], message, extra={"coursegen": fields})


def record_to_row(record: logging.LogRecord) -> dict[str, Any]:
    """Everything the row needs, captured now: the correlation id lives in the caller's context."""
    fields: dict[str, Any] = dict(getattr(record, "coursegen", None) or {})
    data = fields.pop("data", {})
    if record.exc_info:
        data = {**data, "exception": logging.Formatter().formatException(record.exc_info)[-8000:]}
    client_cid = get_client_correlation_id()
    if client_cid:
        data = {**data, "client_correlation_id": client_cid}
    return {
        "level": level_name(record.levelno),
        "event": str(fields.pop("event", record.name))[:100],
        "message": record.getMessage()[:10000],
        "correlation_id": fields.pop("correlation_id", None) or get_correlation_id(),
        "data": data,
        "logger": record.name[:100],
        "source": _SOURCE,
        "created_at": datetime.fromtimestamp(record.created, tz=UTC),
        **fields,
    }


class CorrelationIdFilter(logging.Filter):
    """Adds %(correlation_id)s for console formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = get_correlation_id() or "-"
        return True


class QuietEventsFilter(logging.Filter):
    """Keeps per-task info events (dozens per course) off the console; the database has them."""

    def __init__(self, prefixes: tuple[str, ...] = ("task.", "celery.task")) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        event = str((getattr(record, "coursegen", None) or {}).get("event", ""))
        return record.levelno > logging.INFO or not event.startswith(self.prefixes)


class DatabaseLogHandler(logging.Handler):
    def __init__(
        self,
        level: int | str = logging.NOTSET,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_buffer: int = 10_000,
    ) -> None:
        super().__init__(level)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._buffer: deque[dict[str, Any]] = deque(maxlen=max_buffer)  # oldest go when full
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_error_report = 0.0
        self.written = 0
        self.failed = 0
        _handlers.append(self)
        os.register_at_fork(after_in_child=self._after_fork)

    # --- the caller's side: cheap and never raising -----------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            return
        try:
            self._buffer.append(record_to_row(record))
            self._ensure_thread()
            if len(self._buffer) >= self.batch_size:
                self._wake.set()
        except Exception:
            self.handleError(record)  # prints to stderr; never raises

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="coursegen-log-writer", daemon=True
                    )
                    self._thread.start()

    def _after_fork(self) -> None:
        # A forked child (prefork pool) starts empty: the parent writes what it buffered.
        self._buffer.clear()
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    # --- the writer's side ------------------------------------------------------------------
    def _run(self) -> None:
        from django.db import connections

        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._buffer:
                self.flush()
                # Hold no connection while idle (and none that would block dropping a test DB).
                connections.close_all()

    def flush(self) -> None:
        """Write everything buffered, on the calling thread; returns when it is written."""
        with self._write_lock:
            while self._buffer:
                rows = [self._buffer.popleft() for _ in range(min(len(self._buffer), 1000))]
                self._write(rows)

    def discard(self) -> int:
        """Drop what is buffered, unwritten; returns how many rows (a test without a database)."""
        with self._write_lock:
            dropped = len(self._buffer)
            self._buffer.clear()
            return dropped

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            from django.db import transaction

            from coursegen import db

            # A savepoint when called inside someone's transaction, so a failure cannot poison it.
            with transaction.atomic():
                if db.hand_written_sql():
                    _copy_rows(rows)
                else:
                    _create_rows(rows)
            self.written += len(rows)
        except Exception as exc:
            self.failed += len(rows)
            self._report(f"dropped {len(rows)} log rows: {type(exc).__name__}: {exc}")
            return
        self._alert_on_critical(rows)

    def _alert_on_critical(self, rows: list[dict[str, Any]]) -> None:
        critical = [
            r
            for r in rows
            if r["level"] == "critical" and not r["logger"].startswith(INTERNAL_LOGGER_PREFIX)
        ]
        if not critical:
            return
        try:
            for row in critical:
                for hook in CRITICAL_ROW_HOOKS:
                    hook(row=row)
        except Exception as exc:
            self._report(f"could not raise an alert for a critical log: {exc!r}")

    def _report(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_error_report >= 60:
            self._last_error_report = now
            print(f"coursegen DatabaseLogHandler: {text}", file=sys.stderr)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        try:
            self.flush()
        finally:
            if self in _handlers:
                _handlers.remove(self)
            super().close()


def _data_json(data: Any) -> str:
    return json.dumps(data, cls=DjangoJSONEncoder, default=str)


def _copy_rows(rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: the rows in one COPY. Two log rows per chord task made the ORM's bulk insert
    (a model instance per row, the data through JSON three times, every value quoted into one
    long INSERT) about 5 % of a worker's CPU in the bench's profile (issue 22)."""
    from django.db import connection

    from monitoring.models import CourseGenerationLog

    # The model's columns (not its id), each row's value or the field's default, as an ORM
    # insert would take them.
    fields = [f for f in CourseGenerationLog._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(str(f.column) for f in fields)
    sql = f"COPY {CourseGenerationLog._meta.db_table} ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            values = {**row, "data": _data_json(row.get("data") or {})}
            copy.write_row(
                tuple(values[f.attname] if f.attname in values else f.get_default() for f in fields)
            )


def _create_rows(rows: list[dict[str, Any]]) -> None:
    from monitoring.models import CourseGenerationLog

    for row in rows:
        row["data"] = json.loads(_data_json(row["data"]))
    CourseGenerationLog.objects.bulk_create([CourseGenerationLog(**r) for r in rows])


def flush_all() -> None:
    """Write every buffered log row now (worker shutdown, tests, management commands)."""
    for handler in list(_handlers):
        handler.flush()


def installed_handlers() -> list[DatabaseLogHandler]:
    return list(_handlers)
