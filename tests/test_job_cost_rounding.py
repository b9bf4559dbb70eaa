"""A job's cost (6 places) against its ledger (8 places), as `make chaos` compares them.

`make chaos-rabbitmq` ended with `ledger_vs_job_cost_diff_usd` 8e-06 (then 9e-06) over 84
courses: nine jobs whose 8-place sum ended in 50 (0.03032250). Storing that sum in the 6-place
column, PostgreSQL rounded the half away from zero (0.030323); the check rounded it with
Python's default context, half to even (0.030322). Nothing was missing: every task's counter
was its ledger rows' sum. The job's cost is now rounded once, in `ledger.job_cost`, which the
check uses too; and a late run's usage totals a closed job again instead of adding a rounded
increment to a rounded total.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from generation.llm import AttemptRecord, GenerationResult
from generation.management.chaos_report import ledger_vs_job_cost
from generation.models import CourseGenerationJob, GenerationAttempt, GenerationTask
from generation.providers.base import Usage
from generation.regeneration import job_reassemble
from generation.services import ledger
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)


def _one_paid_task(job: CourseGenerationJob, cost: str) -> GenerationTask:
    """The job's ledger made of one call of one task, costing `cost`."""
    GenerationAttempt.objects.filter(task__job=job).delete()
    GenerationTask.objects.filter(job=job).update(cost_usd=0, reask_cost_usd=0)
    task = job.tasks.order_by("pk").first()
    assert task is not None
    result = _result(cost)
    ledger.task_attempts_record(task=task, result=result)
    GenerationTask.objects.filter(pk=task.pk).update(cost_usd=Decimal(cost), attempts=1)
    task.refresh_from_db()
    return task


def _result(cost: str) -> GenerationResult:
    attempt = AttemptRecord(1, "first", "ok", "gpt-4.1-mini", Usage(), Decimal(cost), 5)
    return GenerationResult(data={"title": "x"}, attempts=[attempt])


def test_a_job_cost_ending_in_a_half_is_what_the_ledger_check_rounds_it_to(
    teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    _one_paid_task(job, "0.03032250")  # 6th place even: half-even and half-up disagree

    job_reassemble(job_id=job.pk)  # totals the closed job from its tasks, as finalize does

    job.refresh_from_db()
    assert job.cost_usd == Decimal("0.030323")
    assert ledger_vs_job_cost([job.pk]) == 0  # before: 0.000001


def test_a_late_run_totals_a_closed_job_again_rather_than_adding_a_rounded_increment(
    teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    task = _one_paid_task(job, "0.00000040")
    job_reassemble(job_id=job.pk)
    job.refresh_from_db()
    assert job.cost_usd == Decimal("0.000000")  # 0.0000004 at 6 places

    # A run that lost its lease records its call after the job closed.
    late = _result("0.00000040")
    with transaction.atomic():
        ledger.task_attempts_record(task=task, result=late)
        ledger.task_usage_add(task=task, result=late)

    job.refresh_from_db()
    assert job.cost_usd == Decimal("0.000001")  # 0.0000008; before: 0 + 0.0000004 = 0.000000
    assert ledger_vs_job_cost([job.pk]) == 0


def test_job_cost_rounds_a_half_up_at_the_job_column_places() -> None:
    assert ledger.job_cost(Decimal("0.03032250")) == Decimal("0.030323")
    assert ledger.job_cost(Decimal("0.03032350")) == Decimal("0.030324")
    assert ledger.job_cost(Decimal("0.03032249")) == Decimal("0.030322")
    assert Decimal("0.000001") == ledger.JOB_COST_QUANTUM
