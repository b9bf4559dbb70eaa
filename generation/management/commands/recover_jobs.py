"""Task-level recovery from the command line: retry failed tasks, resume failed jobs, reconcile."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation import recovery, services
from generation.models import CourseGenerationJob, JobStatus


class Command(BaseCommand):
    help = (
        "Resume a failed job (--job), retry some of its failed tasks (--job with --task), "
        "resume every failed job (--all-failed), or run the reconciler once (--reconcile)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--job", type=UUID, help="id of a failed job")
        target.add_argument("--all-failed", action="store_true", help="every failed job")
        target.add_argument("--reconcile", action="store_true", help="re-send lost work once")
        parser.add_argument("--task", type=int, action="append", help="task id (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["reconcile"]:
            self.stdout.write(str(recovery.reconcile().as_dict()))
            return
        if options["task"] and not options["job"]:
            raise CommandError("--task needs --job")
        job_ids = (
            [options["job"]]
            if options["job"]
            else list(
                CourseGenerationJob.objects.filter(status=JobStatus.FAILED).values_list(
                    "pk", flat=True
                )
            )
        )
        failures = 0
        for job_id in job_ids:
            try:
                recovery.job_resume(job_id=job_id, task_ids=options["task"], by="recover_jobs")
                self.stdout.write(f"resumed {job_id}")
            except (services.GenerationError, CourseGenerationJob.DoesNotExist) as exc:
                failures += 1
                self.stderr.write(f"{job_id}: {exc}")
        if failures:
            raise CommandError(f"{failures} job(s) could not be resumed")
