"""The status page's hand-written task representation matches DRF's declared fields."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from generation.models import GenerationTask
from generation.serializers import TaskOutputSerializer, TaskStatusSerializer


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
