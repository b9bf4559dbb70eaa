"""Measure what database logging costs the code that logs: time per log_event on the caller's
thread (buffering only) and the writer's bulk-insert throughput. Prints numbers; asserts nothing.

Writes --records rows with event "bench.log" under one fresh correlation id, then deletes them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from monitoring.correlation import correlation_scope
from monitoring.logs import DatabaseLogHandler, log_event
from monitoring.models import CourseGenerationLog


class Command(BaseCommand):
    help = "Benchmark the database log handler (emit cost and flush throughput)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--records", type=int, default=20_000)

    def handle(self, *args: Any, records: int, **options: Any) -> None:
        import logging

        handler = DatabaseLogHandler(
            flush_interval=3600, batch_size=records + 1, max_buffer=records
        )
        logger = logging.getLogger("coursegen.bench")
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
        cid = uuid.uuid4()
        with correlation_scope(cid):
            started = time.perf_counter()
            for n in range(records):
                log_event("bench.log", f"record {n}", data={"n": n}, duration_ms=n, logger=logger)
            emit_s = time.perf_counter() - started
        started = time.perf_counter()
        handler.flush()
        flush_s = time.perf_counter() - started
        written = CourseGenerationLog.objects.filter(correlation_id=cid).count()
        CourseGenerationLog.objects.filter(correlation_id=cid).delete()
        handler.close()
        self.stdout.write(
            f"records {records}, written {written}\n"
            f"caller thread: {emit_s / records * 1e6:.1f} us per log_event (no database I/O)\n"
            f"writer: {flush_s:.2f} s for all rows, {written / flush_s:.0f} rows/s in bulk inserts"
        )
