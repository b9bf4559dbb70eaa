"""The ledger: one row per provider call, what it cost and how it ended (generation.models
re-exports these; a module of its own keeps that one under its size limit)."""

from __future__ import annotations

from decimal import Decimal

from django.db import models


class AttemptKind(models.TextChoices):
    FIRST = "first", "First"
    REASK = "reask", "Re-ask after invalid output"
    TRANSPORT_RETRY = "transport_retry", "Retry after a transport error"
    PART = "part", "Targeted regeneration of one part"
    JUDGE = "judge", "Quality judge"
    MODERATION = "moderation", "Content moderation"
    CACHE = "cache", "Served from the cache (no provider call)"
    BATCH = "batch", "First answer through the Batch API (batch price)"


# Attempts that repair output: their cost is the job's re-ask share (with every failed attempt).
REPAIR_KINDS = (AttemptKind.REASK, AttemptKind.PART)


class AttemptOutcome(models.TextChoices):
    OK = "ok", "Valid output"
    INVALID = "invalid", "Invalid output"
    TRANSIENT = "transient", "Transient error"
    PERMANENT = "permanent", "Permanent error"
    FLAGGED = "flagged", "Flagged by moderation"


class GenerationAttempt(models.Model):
    """The ledger: one row per provider call, with what it cost and what went wrong. A call of
    the quality judge belongs to its judge run instead of a task (kind `judge`)."""

    task = models.ForeignKey(
        "generation.GenerationTask",
        on_delete=models.CASCADE,
        related_name="attempt_rows",
        null=True,
        blank=True,
    )
    judge_run = models.ForeignKey(
        "generation.JudgeRun",
        on_delete=models.CASCADE,
        related_name="attempt_rows",
        null=True,
        blank=True,
        db_index=False,  # partial (Meta): most attempts are a task's
    )
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=AttemptKind.choices)
    part = models.CharField(
        max_length=64, blank=True, help_text="The part regenerated (questions.2); empty: whole."
    )
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices)
    model = models.CharField(max_length=100)
    input_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=8, default=Decimal(0))
    latency_ms = models.IntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    # A cache hit (kind `cache`) costs nothing; these say what generating the output had cost.
    saved_cost_usd = models.DecimalField(
        max_digits=12, decimal_places=8, default=Decimal(0), db_default=Decimal(0)
    )
    saved_ms = models.IntegerField(default=0, db_default=0)
    batch = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Answered by a Batch API line, at the batch price (docs/batch.md).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "course_generation_attempts"
        ordering = ["task", "number"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(task__isnull=False) | models.Q(judge_run__isnull=False),
                name="attempt_of_a_task_or_a_judge_run",
            )
        ]
        indexes = [
            models.Index(
                fields=["judge_run"],
                condition=models.Q(judge_run__isnull=False),
                name="attempt_of_judge_run",
            )
        ]
        verbose_name = "attempt"

    def __str__(self) -> str:
        owner = f"task {self.task_id}" if self.task_id else f"judge run {self.judge_run_id}"
        return f"attempt {self.number} of {owner}: {self.outcome}"
