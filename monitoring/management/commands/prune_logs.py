"""Delete course_generation_logs rows older than N days, in batches."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitoring.services import logs_prune


class Command(BaseCommand):
    help = "Delete log rows older than --days (default MONITORING_LOG_RETENTION_DAYS) in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=settings.MONITORING_LOG_RETENTION_DAYS)
        parser.add_argument("--batch-size", type=int, default=5000)

    def handle(self, *args: Any, days: int, batch_size: int, **options: Any) -> None:
        if days < 0 or batch_size < 1:
            raise CommandError("--days must be >= 0 and --batch-size >= 1")
        deleted = logs_prune(older_than_days=days, batch_size=batch_size)
        self.stdout.write(f"deleted {deleted} log rows older than {days} days")
