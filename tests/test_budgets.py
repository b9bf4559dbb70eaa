"""Organisation budgets (issue 21, item 1): a monthly cap in dollars counted from the ledger, a
soft alert once a month at a share, a hard stop (402) on every kind of paid work that changes
nothing, exact under a concurrent burst of several members at the edge."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest
import time_machine
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from accounts.models import BaseClass, Organisation, Role
from coursegen import db
from generation.models import (
    AttemptKind,
    AttemptOutcome,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    RegenerationRequest,
    TaskStatus,
)
from generation.schemas import TaskKind
from monitoring.models import Alert, AlertKind
from ratelimits.models import Admission, OrganisationBudget, RateLimitPolicy
from ratelimits.selectors import budget_report, next_month_start, spent_this_month
from tests.concurrency import run_together
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SMALL = {"topic": "Budgeted fractions", "num_modules": 1, "lessons_per_module": 1}  # 7 tasks
PER_TASK = Decimal("0.003")
CENT = Decimal("0.01")


@pytest.fixture(autouse=True)
def task_price(settings: Any) -> None:
    settings.COURSEGEN_BUDGET_TASK_ESTIMATE_USD = float(PER_TASK)
    settings.COURSEGEN_JUDGE_ENABLED = False


@pytest.fixture
def nothing_starts(settings: Any) -> None:
    # Admitted jobs stay queued: their planned tasks stay reserved, none reaches the ledger.
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 0


@pytest.fixture(params=["sql", "orm"])
def admission_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "orm":
        monkeypatch.setattr(db, "hand_written_sql", lambda: False)
    return str(request.param)


def _budget(organisation: Organisation, monthly: Decimal | str, share: str = "0.8") -> None:
    OrganisationBudget.objects.update_or_create(
        organisation=organisation,
        defaults={"monthly_usd": Decimal(monthly), "alert_share": Decimal(share)},
    )


def _spend(job: CourseGenerationJob, usd: str) -> None:
    """One more paid call in the ledger, on the job's outline task."""
    task = job.tasks.get(kind=TaskKind.OUTLINE)
    GenerationAttempt.objects.create(
        task=task,
        number=1000 + GenerationAttempt.objects.filter(task=task).count(),
        kind=AttemptKind.FIRST,
        outcome=AttemptOutcome.OK,
        model="gpt-4.1-mini",
        cost_usd=Decimal(usd),
    )


def _submit(client: APIClient, base_class: BaseClass, **body: Any) -> Any:
    return client.post(
        "/api/jobs/", {"base_class": str(base_class.pk), **SMALL, **body}, format="json"
    )


def _unlimited(role: Role) -> None:
    RateLimitPolicy.objects.filter(role=role).update(
        per_minute=1000, per_hour=1000, per_day=1000, max_concurrent=1000, tasks_per_hour=100000
    )


# --- The hard stop --------------------------------------------------------------------------------
def test_it_refuses_a_submit_over_the_budget_with_a_402_naming_it_and_changes_nothing(
    admission_path: str,
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    organisation: Organisation,
) -> None:
    teacher = make_member(Role.TEACHER)
    with time_machine.travel(T0, tick=False):
        job = finished_job(teacher, base_class)
        spent = spent_this_month(organisation_id=organisation.pk, now=timezone.now())
        assert spent > 0  # the course's own calls are in the ledger
        # Room for 7 tasks (0.021) less a tenth of a cent.
        _budget(organisation, str((spent + Decimal("0.02")).quantize(CENT, ROUND_CEILING)))
        budget = OrganisationBudget.objects.get().monthly_usd
        _spend(job, str(budget - spent - Decimal("0.02")))  # 0.02 left: short of 0.021
        jobs, admissions = CourseGenerationJob.objects.count(), Admission.objects.count()

        refused = _submit(client_for(teacher), base_class)

    assert refused.status_code == 402, refused.content
    body = refused.json()
    assert body["code"] == "budget_exceeded"
    assert body["organisation"] == str(organisation.pk)
    assert Decimal(body["budget_usd"]) == budget
    assert Decimal(body["spent_usd"]) == budget - Decimal("0.02")
    assert Decimal(body["reserved_usd"]) == 0
    assert Decimal(body["requested_usd"]) == 7 * PER_TASK
    assert parse_datetime(body["resets_at"]) == datetime(2026, 4, 1, tzinfo=UTC)
    assert "resets on 2026-04-01" in body["detail"]
    assert f"${budget:.2f} a month" in body["detail"]
    assert int(refused["Retry-After"]) > 0
    assert (CourseGenerationJob.objects.count(), Admission.objects.count()) == (jobs, admissions)


def test_it_admits_what_still_fits_and_batch_work_at_half_the_estimate(
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    organisation: Organisation,
    nothing_starts: None,
) -> None:
    teacher = make_member(Role.TEACHER)
    _unlimited(Role.TEACHER)
    _budget(organisation, "0.05")  # 2 jobs of 7 tasks now (0.042), then 0.008 left
    client = client_for(teacher)

    codes = [_submit(client, base_class).status_code for _ in range(3)]
    batch = _submit(client, base_class, urgency="batch")  # 0.0105: over what is left
    _budget(organisation, "0.06")  # 0.018 left: a batch job (0.0105) fits, a live one does not
    live = _submit(client, base_class)
    batch_again = _submit(client, base_class, urgency="batch")

    assert codes == [201, 201, 402]
    assert (batch.status_code, live.status_code, batch_again.status_code) == (402, 402, 201)
    report = budget_report(organisation_id=organisation.pk)
    assert report is not None
    assert report.reserved_usd == Decimal("0.0525")


def test_it_refuses_regenerations_resumes_and_retries_over_the_budget(
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    organisation: Organisation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("generation.regeneration.regeneration_send", lambda **_: None)
    teacher = make_member(Role.TEACHER)
    job = finished_job(teacher, base_class)
    client = client_for(teacher)
    task = job.tasks.get(kind=TaskKind.METADATA)
    spent = spent_this_month(organisation_id=organisation.pk, now=timezone.now())
    _budget(organisation, str(spent.quantize(Decimal("0.01")) + Decimal("0.01")))
    _spend(job, str(OrganisationBudget.objects.get().monthly_usd - spent))  # all of it

    regenerate = client.post(
        f"/api/jobs/{job.pk}/tasks/{task.pk}/regenerate/", {"instruction": ""}, format="json"
    )
    GenerationTask.objects.filter(pk=task.pk).update(status=TaskStatus.FAILED)
    CourseGenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)
    retry = client.post(f"/api/jobs/{job.pk}/tasks/{task.pk}/retry/")
    resume = client.post(f"/api/jobs/{job.pk}/resume/")

    assert [r.status_code for r in (regenerate, retry, resume)] == [402, 402, 402]
    assert {r.json()["code"] for r in (regenerate, retry, resume)} == {"budget_exceeded"}
    assert not RegenerationRequest.objects.exists()
    assert CourseGenerationJob.objects.get(pk=job.pk).status == JobStatus.FAILED
    assert GenerationTask.objects.get(pk=task.pk).status == TaskStatus.FAILED


def test_it_stops_a_platform_operator_in_the_admin_too(
    admin_client: Any, make_member: Any, base_class: BaseClass, organisation: Organisation
) -> None:
    # Staff outside the organisation have no role limits, but the organisation pays.
    student = make_member(Role.STUDENT)
    job = finished_job(student, base_class)
    task = job.tasks.get(kind=TaskKind.METADATA)
    _budget(organisation, "0.00")

    response = admin_client.post(
        "/admin/generation/generationtask/",
        {"action": "regenerate_tasks", "_selected_action": [task.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Monthly budget reached" in response.content.decode()
    assert task.versions.count() == 0
    assert not RegenerationRequest.objects.exists()


def test_it_counts_only_this_months_ledger_and_resets_on_the_first(
    make_member: Any, base_class: BaseClass, organisation: Organisation
) -> None:
    teacher = make_member(Role.TEACHER)
    with time_machine.travel(datetime(2026, 12, 31, 23, 0, tzinfo=UTC), tick=False) as clock:
        job = finished_job(teacher, base_class)
        _spend(job, "5")
        december = spent_this_month(organisation_id=organisation.pk, now=timezone.now())
        clock.move_to(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
        january = spent_this_month(organisation_id=organisation.pk, now=timezone.now())
    assert december > 5
    assert january == 0
    assert next_month_start(datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )


# --- The soft alert -------------------------------------------------------------------------------
def test_it_raises_the_soft_alert_once_a_month_per_organisation(
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    organisation: Organisation,
    nothing_starts: None,
) -> None:
    teacher = make_member(Role.TEACHER)
    _unlimited(Role.TEACHER)
    _budget(organisation, "0.10", share="0.3")  # alert from 0.03 committed: the 2nd job
    client = client_for(teacher)
    with time_machine.travel(T0, tick=False) as clock:
        first = _submit(client, base_class)  # 0.021 committed
        assert not Alert.objects.filter(kind=AlertKind.BUDGET).exists()
        codes = [_submit(client, base_class).status_code for _ in range(4)]
        assert Alert.objects.filter(kind=AlertKind.BUDGET).count() == 1
        clock.move_to(datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC))
        CourseGenerationJob.objects.update(status=JobStatus.CANCELLED)  # nothing under way
        assert _submit(client, base_class).status_code == 201
        assert Alert.objects.filter(kind=AlertKind.BUDGET).count() == 1
        assert _submit(client, base_class).status_code == 201

    assert first.status_code == 201
    assert codes == [201, 201, 201, 402]  # 0.042 (the alert), 0.063, 0.084; 0.105 > 0.10
    alerts = Alert.objects.filter(kind=AlertKind.BUDGET).order_by("first_seen_at")
    assert [a.organisation_id for a in alerts] == [organisation.pk, organisation.pk]
    assert [a.subject.rsplit(":", 1)[1] for a in alerts] == ["2026-03", "2026-04"]
    assert "of its $0.10 monthly budget" in alerts[0].message


# --- Concurrency ----------------------------------------------------------------------------------
BURST = 24


def test_it_admits_exactly_what_the_budget_holds_from_a_burst_of_several_members(
    admission_path: str,
    make_member: Any,
    base_class: BaseClass,
    organisation: Organisation,
    nothing_starts: None,
) -> None:
    _unlimited(Role.TEACHER)
    teachers = [make_member(Role.TEACHER) for _ in range(6)]
    _budget(organisation, "0.115")  # 5 jobs of 0.021 (0.105); a 6th would be 0.126

    def one(user: Any) -> int:
        client = APIClient()
        client.force_authenticate(user=user)
        return int(_submit(client, base_class).status_code)

    members = [teachers[i % len(teachers)] for i in range(BURST)]
    calls = [lambda user=user: one(user) for user in members]
    codes = run_together(calls, threads=8)

    assert Counter(codes) == {201: 5, 402: BURST - 5}
    assert CourseGenerationJob.objects.count() == 5
    report = budget_report(organisation_id=organisation.pk)
    assert report is not None
    assert report.committed_usd == Decimal("0.105")


# --- Where it is shown ----------------------------------------------------------------------------
def test_it_shows_the_budget_in_the_rate_limits_endpoint(
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    organisation: Organisation,
    nothing_starts: None,
) -> None:
    teacher = make_member(Role.TEACHER)
    client = client_for(teacher)
    assert client.get("/api/user/rate-limits").json()["budget"] is None
    _budget(organisation, "12.50", share="0.75")
    with time_machine.travel(T0, tick=False):
        _submit(client, base_class)
        budget = client.get("/api/user/rate-limits").json()["budget"]

    assert Decimal(budget["monthly_usd"]) == Decimal("12.50")
    assert Decimal(budget["alert_share"]) == Decimal("0.75")
    assert Decimal(budget["spent_usd"]) >= 0
    assert Decimal(budget["reserved_usd"]) == 7 * PER_TASK
    assert parse_datetime(budget["month_start"]) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_datetime(budget["resets_at"]) == datetime(2026, 4, 1, tzinfo=UTC)


def test_it_edits_budgets_in_the_admin_and_shows_them_on_the_dashboard(
    admin_client: Any, organisation: Organisation
) -> None:
    add = admin_client.post(
        "/admin/ratelimits/organisationbudget/add/",
        {"organisation": str(organisation.pk), "monthly_usd": "40.00", "alert_share": "0.9"},
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    change = admin_client.post(
        f"/admin/ratelimits/organisationbudget/{organisation.pk}/change/",
        {"organisation": str(organisation.pk), "monthly_usd": "55.00", "alert_share": "0.9"},
    )
    assert change.status_code == 302
    assert OrganisationBudget.objects.get().monthly_usd == Decimal("55.00")
    bad = admin_client.post(
        f"/admin/ratelimits/organisationbudget/{organisation.pk}/change/",
        {"organisation": str(organisation.pk), "monthly_usd": "55.00", "alert_share": "1.5"},
    )
    assert bad.status_code == 200  # the form again, with the error
    assert OrganisationBudget.objects.get().alert_share == Decimal("0.9")

    changelist = admin_client.get("/admin/ratelimits/organisationbudget/").content.decode()
    dashboard = admin_client.get("/admin/").content.decode()

    assert "spent this month" in changelist.lower()
    assert 'id="budget-list"' in dashboard
    assert organisation.name in dashboard
    assert "55.00" in dashboard


def test_it_estimates_batch_work_at_the_batch_apis_price() -> None:
    from generation.pricing import BATCH_DISCOUNT
    from ratelimits.selectors import BATCH_SHARE

    assert BATCH_SHARE == BATCH_DISCOUNT
