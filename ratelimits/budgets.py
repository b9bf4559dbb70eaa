"""Per-organisation monthly budgets in dollars: a soft alert at a share, a hard stop at the cap.

Checked inside admission's transaction, after the user's usage row is locked: the budget row is
locked next (always in that order, so two admissions cannot deadlock), and the organisation's
commitment is read afresh by the statements after the lock. Two requests of one organisation
therefore queue on the budget row, and the second counts the work the first admitted.

The commitment is what the ledger (course_generation_attempts) says was spent since the first of
this month (UTC), plus what admitted work will still cost: each unfinished job's planned tasks not
yet finished, and each open regeneration, at COURSEGEN_BUDGET_TASK_ESTIMATE_USD a task (half for
batch jobs, which the Batch API bills at half price). Paid work whose own estimate would take the
commitment over the cap is refused with BudgetExceeded, and nothing is written.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db import connection
from django.utils import timezone

from coursegen import db
from ratelimits.models import OrganisationBudget
from ratelimits.selectors import BudgetReport, budget_report, usd, work_estimate_usd

logger = logging.getLogger("coursegen.ratelimits")


class BudgetExceeded(Exception):  # the name says what happened, like RateLimitExceeded
    """Paid work refused: its estimate would take the organisation's month over its budget."""

    def __init__(self, *, report: BudgetReport, requested_usd: Decimal) -> None:
        self.report, self.requested_usd = report, requested_usd
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        r = self.report
        return (
            f"Monthly budget reached: this organisation may spend ${r.monthly_usd:.2f} a month "
            f"on generation; ${usd(r.spent_usd)} is spent and ${usd(r.reserved_usd)} committed "
            f"to work under way, and this request would cost about ${usd(self.requested_usd)}. "
            f"The budget resets on {r.resets_at:%Y-%m-%d} 00:00 UTC."
        )

    @property
    def retry_after_s(self) -> int:
        return max(int((self.report.resets_at - timezone.now()).total_seconds()), 1)

    def as_body(self) -> dict[str, Any]:
        r = self.report
        return {
            "detail": self.detail,
            "code": "budget_exceeded",
            "organisation": r.organisation_id,
            "budget_usd": usd(r.monthly_usd),
            "spent_usd": usd(r.spent_usd),
            "reserved_usd": usd(r.reserved_usd),
            "requested_usd": usd(self.requested_usd),
            "month_start": r.month_start,
            "resets_at": r.resets_at,
            "retry_after_s": self.retry_after_s,
        }


def budget_admit(
    *, organisation_id: UUID, units: int, batch: bool = False, now: datetime | None = None
) -> BudgetReport | None:
    """Lock the organisation's budget row and admit paid work of `units` tasks against it, or
    raise BudgetExceeded. Raises the month's soft alert when the commitment with this request
    reaches the alert share. Must run inside the transaction that starts the work, after the
    user's usage row is locked."""
    budget = _budget_locked(organisation_id=organisation_id)
    if budget is None:
        return None
    # A statement after the lock: it sees the work committed by whoever held the lock before.
    report = budget_report(organisation_id=organisation_id, now=now, budget=budget)
    assert report is not None
    requested = work_estimate_usd(units=units, batch=batch)
    if report.committed_usd + requested > report.monthly_usd:
        raise BudgetExceeded(report=report, requested_usd=requested)
    if report.committed_usd + requested >= report.alert_at_usd:
        soft_alert_raise(report=report, committed_usd=report.committed_usd + requested)
    return report


def _budget_locked(*, organisation_id: UUID) -> OrganisationBudget | None:
    """The organisation's budget row, locked (FOR NO KEY UPDATE), or None. On PostgreSQL one
    hand-written statement: the ORM's query building was a tenth of a submit's CPU (issue 22)."""
    if not db.hand_written_sql():
        return (
            OrganisationBudget.objects.select_for_update(no_key=True)
            .filter(organisation_id=organisation_id)
            .first()
        )
    fields = OrganisationBudget._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {OrganisationBudget._meta.db_table} "
            "WHERE organisation_id = %s FOR NO KEY UPDATE",
            [organisation_id],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return OrganisationBudget.from_db(connection.alias, [f.attname for f in fields], row)


def soft_alert_raise(*, report: BudgetReport, committed_usd: Decimal) -> bool:
    """Raise the organisation's budget alert once a month (the conditional update decides)."""
    from monitoring.models import AlertKind
    from monitoring.services import alert_raise

    month = report.month_start.date()
    first = (
        OrganisationBudget.objects.filter(organisation_id=report.organisation_id)
        .exclude(alerted_month=month)
        .update(alerted_month=month)
    )
    if not first:
        return False
    share = committed_usd / report.monthly_usd if report.monthly_usd else Decimal(1)
    alert_raise(
        kind=AlertKind.BUDGET,
        subject=f"organisation:{report.organisation_id}:{month:%Y-%m}",
        message=f"Organisation {report.organisation_id} has committed ${usd(committed_usd)} "
        f"({share:.0%}) of its ${report.monthly_usd:.2f} monthly budget for {month:%Y-%m}.",
        data={"budget_usd": str(report.monthly_usd), "committed_usd": usd(committed_usd)},
        organisation_id=report.organisation_id,
    )
    return True


def budget_refusal_record(*, exceeded: BudgetExceeded) -> None:
    """After a refusal rolled back: the month's soft alert if it was not raised yet (the cap is
    past its share), and a log line."""
    report = exceeded.report
    soft_alert_raise(report=report, committed_usd=report.committed_usd + exceeded.requested_usd)
    logger.warning("budget: organisation %s %s", report.organisation_id, exceeded.detail)
