"""Batches sent to the provider's Batch API and the task attempts in them (docs/batch.md).

A batch's id and state are rows here, so a restart of any process resumes polling; each request
is one attempt of one task under its own `custom_id`, and its state says whether its result was
taken (at most once), failed, went unanswered, or was cancelled with its job.
"""

from __future__ import annotations

from django.db import models


class Urgency(models.TextChoices):
    """How soon a course is wanted: "now" runs its calls live; "batch" sends them through the
    provider's Batch API (half the price, within 24 hours; docs/batch.md)."""

    NOW = "now", "Now (live calls)"
    BATCH = "batch", "Batch (half price, within a day)"


class BatchStatus(models.TextChoices):
    SUBMITTING = "submitting", "Being uploaded and created at the provider"
    SUBMITTED = "submitted", "At the provider (see provider_status)"
    ENDED = "ended", "Ended; its lines are recorded on its requests"


class ProviderBatch(models.Model):
    """One batch at the provider: one model, one JSONL input file, up to 50,000 requests."""

    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=BatchStatus.choices, default=BatchStatus.SUBMITTING, db_index=True
    )
    provider_status = models.CharField(
        max_length=16,
        blank=True,
        help_text="The provider's: validating, in_progress, finalizing, completed, failed, "
        "expired, cancelling, cancelled.",
    )
    provider_batch_id = models.CharField(max_length=200, blank=True, db_index=True)
    # Written with the row, before anything reaches the provider, and sent as the batch's metadata
    # and in its file's name: a poller killed between the provider's answer and recording it
    # leaves the row `submitting`, and the next one finds that batch (or file) by this key and
    # adopts it instead of creating a second one.
    client_key = models.CharField(max_length=64, blank=True, db_index=True)
    input_file_id = models.CharField(max_length=200, blank=True)
    output_file_id = models.CharField(max_length=200, blank=True)
    error_file_id = models.CharField(max_length=200, blank=True)
    request_total = models.PositiveIntegerField(default=0)
    request_completed = models.PositiveIntegerField(default=0)
    request_failed = models.PositiveIntegerField(default=0)
    # The poller's claim: one poller works on a batch at a time; a killed one's lease runs out.
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    polled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "course_generation_batches"
        ordering = ["-created_at"]
        verbose_name = "provider batch"
        verbose_name_plural = "provider batches"

    def __str__(self) -> str:
        return f"batch {self.pk} {self.provider_batch_id or '-'} [{self.status}]"


class BatchRequestStatus(models.TextChoices):
    QUEUED = "queued", "Waiting for the next batch"
    SUBMITTED = "submitted", "In a batch at the provider"
    ANSWERED = "answered", "Answered; the result is not applied yet"
    APPLIED = "applied", "Result taken by its task"
    CONTINUED = "continued", "Answer taken; a repair of it follows in the task's next request"
    FAILED = "failed", "The line failed"
    UNANSWERED = "unanswered", "Unanswered when the batch ended (expired)"
    RETRIED = "retried", "Failed or unanswered, and sent again (batch or live)"
    CANCELLED = "cancelled", "Its job was cancelled; never applied"


# A task has at most one request in these states at a time.
BATCH_REQUEST_OPEN = (
    BatchRequestStatus.QUEUED,
    BatchRequestStatus.SUBMITTED,
    BatchRequestStatus.ANSWERED,
)


class BatchRequest(models.Model):
    """One attempt of one task through the Batch API: its line's `custom_id`, and its answer."""

    task = models.ForeignKey(
        "generation.GenerationTask", on_delete=models.CASCADE, related_name="batch_requests"
    )
    batch = models.ForeignKey(
        ProviderBatch,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="requests",
    )
    # Besides course tasks, a judge run's verdict and a regeneration go by batch too, by setting
    # (COURSEGEN_BATCH_JUDGE, COURSEGEN_BATCH_REGENERATIONS): the request is then that run's or
    # that regeneration's, and `task` the task it is about (the lesson's section, the task
    # regenerated). The run itself takes the answer, woken by the poller (docs/batch.md).
    judge_run = models.ForeignKey(
        "generation.JudgeRun",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="batch_requests",
    )
    regeneration = models.ForeignKey(
        "generation.RegenerationRequest",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="batch_requests",
    )
    custom_id = models.CharField(max_length=64, unique=True)
    number = models.PositiveIntegerField(help_text="The task's n-th request through a batch.")
    model = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16,
        choices=BatchRequestStatus.choices,
        default=BatchRequestStatus.QUEUED,
        db_index=True,
    )
    response = models.JSONField(
        null=True, blank=True, help_text="The line's response body (a chat.completion)."
    )
    # A repair of a batch answer (COURSEGEN_BATCH_REPAIR): what its line asks, and the answers
    # of the task's earlier requests in this run, replayed (not paid again) before this one's.
    request = models.JSONField(
        null=True, blank=True, help_text="The repair request its line sends; empty: the first."
    )
    prior = models.JSONField(
        default=list, blank=True, help_text="Earlier lines' response bodies this run replays."
    )
    live = models.BooleanField(
        default=False, help_text="Continued by live calls in the poller, not by a batch line."
    )
    error_code = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "course_generation_batch_requests"
        ordering = ["task", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["task"],
                condition=models.Q(
                    status__in=["queued", "submitted", "answered"],
                    judge_run__isnull=True,
                    regeneration__isnull=True,
                ),
                name="uniq_open_batch_request_per_task",
            ),
            models.UniqueConstraint(
                fields=["judge_run"],
                condition=models.Q(status__in=["queued", "submitted", "answered"]),
                name="uniq_open_batch_request_per_judge_run",
            ),
            models.UniqueConstraint(
                fields=["regeneration"],
                condition=models.Q(status__in=["queued", "submitted", "answered"]),
                name="uniq_open_batch_request_per_regeneration",
            ),
            models.CheckConstraint(
                condition=models.Q(judge_run__isnull=True) | models.Q(regeneration__isnull=True),
                name="batch_request_one_owner",
            ),
        ]
        verbose_name = "batch request"

    def __str__(self) -> str:
        return f"{self.custom_id} [{self.status}]"
