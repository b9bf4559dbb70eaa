"""Export a finished course to a file: md, html, pdf, qti (QTI 2.1) or scorm (SCORM 1.2).

manage.py export_course JOB --format pdf -o course.pdf
manage.py export_course --latest --format scorm          # file name from the course title
manage.py export_course JOB --format md -o -             # to standard output
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation import exports
from generation.models import CourseGenerationJob
from generation.selectors import latest_course_job


class Command(BaseCommand):
    help = "Export a finished course as md, html, pdf, qti (QTI 2.1 package) or scorm (SCORM 1.2)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", nargs="?", help="the job id (a UUID)")
        parser.add_argument(
            "--latest", action="store_true", help="export the newest succeeded job instead"
        )
        parser.add_argument("--format", "-f", required=True, choices=list(exports.FORMATS))
        parser.add_argument(
            "-o", "--output", help="file to write ('-' for standard output; default: a file "
            "named after the course in the current directory)"
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        job = self._job(options["job"], latest=options["latest"])
        try:
            export = exports.course_export(job=job, export_format_name=options["format"])
        except exports.ExportError as exc:
            raise CommandError(f"job {job.pk}: {exc}") from exc
        output = options["output"] or export.filename
        if output == "-":
            sys.stdout.buffer.write(export.content)
            sys.stdout.buffer.flush()
            return
        Path(output).write_bytes(export.content)
        self.stderr.write(
            f"Wrote {output}: {export.content_type.split(';')[0]}, {len(export.content)} bytes, "
            f"in {export.duration_s:.2f} s (job {job.pk}, {job.topic!r})"
        )

    def _job(self, job_id: str | None, *, latest: bool) -> CourseGenerationJob:
        if latest == bool(job_id):
            raise CommandError("give either a job id or --latest")
        if latest:
            job = latest_course_job()
            if job is None:
                raise CommandError("no succeeded job with a course yet")
            return job
        try:
            pk = UUID(str(job_id))
        except ValueError as exc:
            raise CommandError(f"{job_id!r} is not a job id (a UUID)") from exc
        found = CourseGenerationJob.objects.select_related("organisation", "base_class").filter(
            pk=pk
        )
        job = found.first()
        if job is None:
            raise CommandError(f"no job {pk}")
        return job
