"""HTML pages for people: the course page at /courses/<job id>/.

The same visibility as the API (the organisation's teachers and admins, a student for their own
job; anyone else gets 404, which does not reveal that the job exists), plus staff who may view
jobs in the admin. Anonymous visitors are sent to the login page.
"""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from generation.exports import FORMATS, course_of_job
from generation.exports.html import course_html
from generation.models import JobStatus
from generation.selectors import course_job_visible


def export_links(job_id: UUID) -> list[dict[str, str]]:
    return [
        {"label": fmt.label, "url": reverse("job-export", args=[job_id, name]), "format": name}
        for name, fmt in FORMATS.items()
    ]


@require_safe
@login_required
def course_page(request: HttpRequest, job_id: UUID) -> HttpResponse:
    job = course_job_visible(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("No such course.")
    if job.course is None:
        waiting = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        context = {"job": job, "refresh": waiting}
        return render(request, "courses/not_ready.html", context, status=409)
    course = course_of_job(job)
    # Held content has no export until staff release it: the page says so instead of linking.
    html = course_html(course, downloads=() if course.held else export_links(job.pk))
    return HttpResponse(html)
