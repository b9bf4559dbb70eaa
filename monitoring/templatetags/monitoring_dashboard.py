"""Template tags: the monitoring dashboard on the admin index, a job's story on its page."""

from __future__ import annotations

from typing import Any

from django import template

from accounts.selectors import administered_organisation_ids, is_organisation_admin
from generation.models import CourseGenerationJob
from monitoring.selectors import (
    dashboard_context,
    job_story_context,
    organisation_dashboard_context,
)

register = template.Library()


@register.inclusion_tag("monitoring/dashboard.html", takes_context=True)
def monitoring_dashboard(context: template.Context) -> dict[str, Any]:
    """Staff with the named permission monitoring.view_dashboard see it: platform operators the
    whole platform, organisation administrators only their organisations (docs/admin.md)."""
    request = context.get("request")
    if request is None or not request.user.is_staff:
        return {"visible": False}
    if not request.user.has_perm("monitoring.view_dashboard"):
        return {"visible": False}
    if is_organisation_admin(request.user):
        ids = administered_organisation_ids(request.user)
        return {"visible": True, **organisation_dashboard_context(organisation_ids=ids)}
    return {"visible": True, **dashboard_context()}


@register.inclusion_tag("monitoring/job_story.html")
def job_story(job: CourseGenerationJob | None) -> dict[str, Any]:
    if job is None or job.pk is None:
        return {"visible": False}
    return {"visible": True, **job_story_context(job=job)}
