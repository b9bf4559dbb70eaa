"""Reads about the Batch API path (docs/batch.md), apart from generation/selectors.py: they
price attempts, and monitoring, which reads the selectors, never reaches the providers."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db.models import Sum

from generation.pricing import BATCH_DISCOUNT
from generation.selectors import job_attempts


def job_batch_saving(*, job_id: UUID) -> Decimal:
    """What the job's Batch API answers (attempts marked `batch`: first answers, repairs,
    regenerations and judge verdicts) would have cost more as live calls: their cost at the
    batch discount, scaled back to list prices, less what they cost."""
    paid = job_attempts(job_id).filter(batch=True).aggregate(total=Sum("cost_usd"))[
        "total"
    ] or Decimal(0)
    return paid / BATCH_DISCOUNT - paid


def owner_batch_work() -> bool:
    """Whether judge runs or regenerations may go by batch (docs/batch.md): a job that ran
    live may then have a saving too."""
    modes = (settings.COURSEGEN_BATCH_JUDGE, settings.COURSEGEN_BATCH_REGENERATIONS)
    return any(mode != "off" for mode in modes)
