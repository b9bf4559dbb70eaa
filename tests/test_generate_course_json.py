"""generate_course --json: one JSON object on stdout's last line, whatever the outcome."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from generation.management.commands.generate_course import _constraints
from generation.models import ProviderConstraint

KEYS = {
    "job_id", "status", "tasks", "calls", "first_attempt_valid_share", "attempts", "constraint",
    "tokens_in", "tokens_out", "cost_usd", "quality", "wall_s", "failed_tasks",
}  # fmt: skip


def _run(teacher: Any, *extra: str) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    args = ["--user", teacher.username, "--topic", "Rivers and valleys", "--modules", "1"]
    args += ["--lessons", "1", "--questions", "2", "--json", *extra]
    error = ""
    try:
        call_command("generate_course", *args, stdout=out)
    except CommandError as exc:
        error = str(exc)
    last = out.getvalue().strip().splitlines()[-1]
    return json.loads(last), error


@pytest.mark.django_db(transaction=True)
def test_it_prints_the_runs_figures_as_the_last_line(teacher: Any, base_class: Any) -> None:
    summary, error = _run(teacher)

    assert error == ""
    assert set(summary) >= KEYS
    assert summary["status"] == "succeeded" and summary["failed_tasks"] == []
    assert summary["tasks"] >= 4 and summary["calls"] >= summary["tasks"]
    assert summary["first_attempt_valid_share"] == 1.0
    assert summary["attempts"]["first"]["ok"] >= summary["tasks"]
    assert summary["constraint"] == {"gpt-4.1-mini": "none", "gpt-4.1-nano": "none"}
    assert summary["tokens_in"] > 0 and summary["tokens_out"] > 0 and summary["cost_usd"] > 0
    assert 0 < summary["quality"]["heuristic"] <= 1
    assert summary["wall_s"] > 0 and summary["provider"] == "offline"


@pytest.mark.django_db(transaction=True)
def test_it_names_each_failed_task_with_its_kind_key_and_error(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    # Every reply is schema-invalid (one mistake in one part): some tasks cannot be repaired.
    settings.COURSEGEN_OFFLINE_FAULTS = "invalid=1.0"
    settings.COURSEGEN_CACHE_ENABLED = False

    summary, error = _run(teacher)

    assert summary["status"] == "failed" and "failed" in error
    assert summary["first_attempt_valid_share"] == 0.0
    assert summary["attempts"]["first"]["invalid"] >= 1 and summary["attempts"]["part"]
    assert summary["failed_tasks"]
    for failed in summary["failed_tasks"]:
        assert set(failed) == {"kind", "key", "error"} and failed["key"]
        assert " check failed at " in failed["error"], failed


@pytest.mark.django_db
def test_it_reports_the_constraint_step_the_openai_provider_settled_on(settings: Any) -> None:
    settings.COURSEGEN_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    ProviderConstraint.objects.create(
        base_url="http://127.0.0.1:9/v1", model="local", step="json_object_schema"
    )

    assert _constraints(["local", "other"]) == {
        "local": "json_object_schema",
        "other": "undecided",
    }
