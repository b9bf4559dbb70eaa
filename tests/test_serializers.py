"""Output serializers made cheaper (tasks read directly, job fields built once) render exactly
what DRF's own field machinery renders."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.serializers import Serializer

from generation import services
from generation.models import CourseGenerationJob, GenerationTask, JobStatus
from generation.schemas import CourseRequest
from generation.serializers import (
    JobDetailOutputSerializer,
    JobOutputSerializer,
    JobProgressOutputSerializer,
    TaskOutputSerializer,
    TaskStatusSerializer,
)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "cost_usd": Decimal("0.0001234"),
            "started_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            "finished_at": datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
            "validation_errors": [{"path": "a.b", "message": "too short"}],
            "error": "x",
            "input_tokens": 12,
        },
    ],
)
def test_it_renders_tasks_exactly_like_drf_fields(values: dict[str, Any]) -> None:
    task = GenerationTask(
        id=7, kind="outline", key="course", tier="complex", model="m", prompt_version="v1", **values
    )

    assert TaskStatusSerializer(task).data == TaskOutputSerializer(task).data


@pytest.mark.django_db
@pytest.mark.parametrize("finished", [False, True])
@pytest.mark.parametrize(
    "serializer", [JobOutputSerializer, JobDetailOutputSerializer, JobProgressOutputSerializer]
)
def test_it_renders_jobs_exactly_like_drf_with_fields_built_once(
    teacher: Any, base_class: Any, serializer: type[Serializer], finished: bool
) -> None:
    job = services.job_submit(
        user=teacher, base_class=base_class, request=CourseRequest(topic="Tides and the moon")
    )
    if finished:
        job.status, job.course, job.cost_usd = JobStatus.SUCCEEDED, {"title": "T"}, Decimal("0.5")
        job.reask_cost_usd, job.finished_at = Decimal("0.125"), datetime(2026, 1, 2, tzinfo=UTC)
        job.save()
    job = CourseGenerationJob.objects.get(pk=job.pk)

    fast = serializer(job).data
    drf = Serializer.to_representation(serializer(job), job)  # fields built for this object

    assert fast == drf
    assert fast["id"] == str(job.pk) and (
        "queue_position" not in fast or finished or fast["queue_position"] == 1
    )
