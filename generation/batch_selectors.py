"""Reads about the Batch API path (docs/batch.md), apart from generation/selectors.py: they
price attempts, and monitoring, which reads the selectors, never reaches the providers."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db.models import Q, Sum

from generation.models import GenerationAttempt
from generation.pricing import BATCH_DISCOUNT


def job_batch_saving(*, job_id: UUID) -> Decimal:
    """What the job's Batch API answers (attempts marked `batch`: first answers, repairs,
    regenerations and judge verdicts) would have cost more as live calls: their cost at the
    batch discount, scaled back to list prices, less what they cost."""
    ours = Q(task__job_id=job_id) | Q(judge_run__job_id=job_id)
    paid = GenerationAttempt.objects.filter(ours, batch=True).aggregate(total=Sum("cost_usd"))[
        "total"
    ] or Decimal(0)
    return paid / BATCH_DISCOUNT - paid


def owner_batch_work() -> bool:
    """Whether judge runs or regenerations may go by batch (docs/batch.md): a job that ran
    live may then have a saving too."""
    modes = (settings.COURSEGEN_BATCH_JUDGE, settings.COURSEGEN_BATCH_REGENERATIONS)
    return any(mode != "off" for mode in modes)
