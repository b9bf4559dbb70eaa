"""Exports of a finished course: Markdown, HTML, PDF, QTI 2.1 and SCORM 1.2.

One module per format, each with `render(course) -> bytes`; they all read the typed course of
document.py, built from `job.course` (the current version of every task after regenerations).
`course_export` is what the API, the admin action and `manage.py export_course` call.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.core.cache import cache

from generation.exports.document import Course, course_from_document, course_of_job
from generation.exports.text import file_stem
from monitoring.logs import log_event

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from generation.models import CourseGenerationJob

__all__ = [
    "FORMATS",
    "Course",
    "CourseHeld",
    "CourseNotReady",
    "ExportError",
    "ExportFile",
    "ExportFormat",
    "UnknownFormat",
    "course_export",
    "course_from_document",
    "course_of_job",
    "render_course",
]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    label: str
    extension: str
    content_type: str
    module: str  # imported on first use: WeasyPrint and lxml load only for their formats
    cached: bool = False  # slow to make: kept in the cache per version of the course


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("md", "Markdown", "md", "text/markdown; charset=utf-8", "markdown"),
        ExportFormat("html", "HTML", "html", "text/html; charset=utf-8", "html"),
        ExportFormat("pdf", "PDF", "pdf", "application/pdf", "pdf", cached=True),
        ExportFormat("qti", "QTI 2.1", "qti.zip", "application/zip", "qti"),
        ExportFormat("scorm", "SCORM 1.2", "scorm.zip", "application/zip", "scorm"),
    )
}


@dataclass(frozen=True)
class ExportFile:
    content: bytes
    content_type: str
    filename: str
    duration_s: float


class ExportError(Exception):
    pass


class UnknownFormat(ExportError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown export format {name!r}; one of {', '.join(FORMATS)}")


class CourseNotReady(ExportError):
    def __init__(self, job: CourseGenerationJob) -> None:
        super().__init__(f"the course is not ready: the job is {job.status}")
        self.status = job.status


class CourseHeld(ExportError):
    """Part of the course is held by content moderation: no file until staff release it (or
    the part is regenerated), so a file never leaves with unreviewed content or a gap."""

    def __init__(self, course: Course) -> None:
        super().__init__(
            f"part of the course is held for content review ({', '.join(course.held)}); "
            "it can be exported once staff release it or it is regenerated"
        )
        self.held = course.held


def export_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UnknownFormat(name)
    return FORMATS[name]


def render_course(course: Course, name: str) -> bytes:
    """`course` in format `name` (no job, no logging: for tests and previews)."""
    module = importlib.import_module(f"generation.exports.{export_format(name).module}")
    content: bytes = module.render(course)
    return content


# Bump when the templates or a renderer change what a cached export looks like.
RENDER_VERSION = "1"
CACHE_SECONDS = 6 * 3600


def _cache_key(course: Course, fmt: ExportFormat) -> str:
    """Per version of the course: a regeneration (or a renamed class) changes the course."""
    digest = hashlib.sha256(repr(course).encode()).hexdigest()[:32]
    return f"export:{RENDER_VERSION}:{fmt.name}:{course.job_id}:{digest}"


def _render(course: Course, fmt: ExportFormat) -> tuple[bytes, bool]:
    """The file's bytes, and whether they came from the cache."""
    if not fmt.cached:
        return render_course(course, fmt.name), False
    key = _cache_key(course, fmt)
    content = cache.get(key)
    if isinstance(content, bytes):
        return content, True
    content = render_course(course, fmt.name)
    cache.set(key, content, CACHE_SECONDS)
    return content, False


def course_export(
    *, job: CourseGenerationJob, export_format_name: str, by: AbstractBaseUser | None = None
) -> ExportFile:
    """The job's current course as a file in the named format; logs who exported what."""
    fmt = export_format(export_format_name)
    if job.course is None:
        raise CourseNotReady(job)
    started = time.monotonic()
    course = course_of_job(job)
    if course.held:
        raise CourseHeld(course)
    content, cached = _render(course, fmt)
    elapsed = time.monotonic() - started
    log_event(
        "course.exported",
        f"course exported as {fmt.label} ({len(content)} bytes{', cached' if cached else ''})",
        job=job,
        user=by,
        data={"format": fmt.name, "bytes": len(content), "cached": cached},
        duration_ms=elapsed * 1000,
    )
    filename = f"{file_stem(course.title)}.{fmt.extension}"
    return ExportFile(content, fmt.content_type, filename, elapsed)
