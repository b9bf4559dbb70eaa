"""The record of truth for course generation: jobs, their tasks, every provider attempt, the queue.

Celery only delivers messages; these rows say what has happened. Table names follow the
specification so its SQL runs as written.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import BaseClass, Organisation
from generation.batch_models import BatchRequest, ProviderBatch, Urgency  # noqa: F401
from generation.ledger_models import (  # noqa: F401
    REPAIR_KINDS,
    AttemptKind,
    AttemptOutcome,
    GenerationAttempt,
)
from generation.schemas import CourseRequest, TaskKind, Tier


class Priority(models.IntegerChoices):
    # Celery's Redis transport consumes 0 first, so lower numbers run sooner everywhere.
    URGENT = 0, "Urgent"
    HIGH = 2, "High"
    NORMAL = 5, "Normal"
    LOW = 8, "Low"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class JudgeStatus(models.TextChoices):
    OFF = "off", "Not judged (judge switched off, or the course did not finish)"
    PENDING = "pending", "Waiting for the judge"
    RUNNING = "running", "Being judged"
    DONE = "done", "Judged"


JOB_TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class CourseGenerationJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="generation_jobs"
    )
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="jobs")
    base_class = models.ForeignKey(BaseClass, on_delete=models.PROTECT, related_name="jobs")
    request = models.JSONField(help_text="The validated CourseRequest.")
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    urgency = models.CharField(
        max_length=8,
        choices=Urgency.choices,
        default=Urgency.NOW,
        db_default=Urgency.NOW,
        help_text="now: live calls; batch: the provider's Batch API at half the price.",
    )
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent of tasks succeeded.")
    outline = models.JSONField(null=True, blank=True, help_text="Copied from the outline task.")
    course = models.JSONField(null=True, blank=True, help_text="The assembled course.")
    input_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    reask_cost_usd = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal(0),
        help_text="Part of the cost spent on re-asks, part repairs and failed attempts.",
    )
    correlation_id = models.UUIDField(default=uuid.uuid4, editable=False, db_index=True)
    error = models.TextField(blank=True)
    chord_dispatched_at = models.DateTimeField(null=True, blank=True)
    # The finalize's claim: one finalizer at a time (the chord body, the reconciler), fenced by
    # (finalize_worker, finalize_runs); a killed finalizer's lease runs out and another resumes.
    finalize_worker = models.CharField(max_length=200, blank=True)
    finalize_runs = models.PositiveIntegerField(default=0)
    finalize_lease_expires_at = models.DateTimeField(null=True, blank=True)
    quality_score = models.FloatField(
        null=True, blank=True, help_text="Overall score of the latest heuristic evaluation (0-1)."
    )
    judge_status = models.CharField(
        max_length=16,
        choices=JudgeStatus.choices,
        default=JudgeStatus.OFF,
        help_text="Where the LLM judge is with this course (generation/quality/judging.py).",
    )
    judge_score = models.FloatField(
        null=True, blank=True, help_text="Overall score of the LLM judge's course evaluation (0-1)."
    )
    judge_cost_usd = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal(0),
        help_text="What the judge's calls cost; not part of cost_usd (the generation cost).",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "course_generation_jobs"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organisation", "-created_at"]),
            models.Index(fields=["owner", "status"]),
            models.Index(fields=["status", "created_at"]),
            # The reconciler looks for courses the judge has not finished, every few seconds.
            models.Index(
                fields=["judge_status", "finished_at"],
                condition=models.Q(judge_status__in=[JudgeStatus.PENDING, JudgeStatus.RUNNING]),
                name="job_judging_open",
            ),
        ]
        verbose_name = "job"

    def __str__(self) -> str:
        return f"{self.topic} [{self.status}]"

    @property
    def topic(self) -> str:
        return str(self.request.get("topic", ""))

    @property
    def course_request(self) -> CourseRequest:
        return CourseRequest.model_validate(self.request)

    @property
    def is_terminal(self) -> bool:
        return self.status in JOB_TERMINAL

    @property
    def reask_share(self) -> float:
        """The share of the job's cost spent repairing output (0 when nothing was spent)."""
        return float(self.reask_cost_usd / self.cost_usd) if self.cost_usd else 0.0

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TASK_TERMINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class ModerationStatus(models.TextChoices):
    """Where a task's output stands with content moderation (docs/safety.md)."""

    UNCHECKED = "", "Not moderated"
    PASSED = "passed", "Passed"
    HELD = "held", "Held for staff review"
    RELEASED = "released", "Released by staff"
    REJECTED = "rejected", "Rejected by staff"


# Outputs kept out of the course (and its exports) until staff release them.
MODERATION_WITHHELD = (ModerationStatus.HELD, ModerationStatus.REJECTED)
# Outputs staff review or reviewed (the moderation queue in the admin).
MODERATION_REVIEWED = (ModerationStatus.HELD, ModerationStatus.RELEASED, ModerationStatus.REJECTED)


class GenerationTask(models.Model):
    """One unit of generation inside a job, e.g. the lesson section of module 2, lesson 3."""

    # No index of its own: the unique (job, kind, key) constraint's index leads with it.
    job = models.ForeignKey(
        CourseGenerationJob, on_delete=models.CASCADE, related_name="tasks", db_index=False
    )
    kind = models.CharField(max_length=32, choices=[(k.value, k.value) for k in TaskKind])
    key = models.CharField(max_length=32, help_text="course, m2 or m2.l3")
    position = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    tier = models.CharField(max_length=16, choices=[(t.value, t.value) for t in Tier])
    model = models.CharField(max_length=100, blank=True)
    prompt_version = models.CharField(max_length=32, blank=True)
    runs = models.PositiveIntegerField(default=0, help_text="Times a worker claimed this task.")
    attempts = models.PositiveIntegerField(default=0, help_text="Provider calls made.")
    output = models.JSONField(null=True, blank=True)
    validation_errors = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    input_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=8, default=Decimal(0))
    reask_cost_usd = models.DecimalField(max_digits=12, decimal_places=8, default=Decimal(0))
    duration_ms = models.IntegerField(default=0, help_text="Wall time of the last run.")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When a message for this task was last sent (or is due)."
    )
    deferrals = models.PositiveIntegerField(
        default=0, help_text="Times the task was rescheduled because the provider was unavailable."
    )
    deferred_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Start of the current run of deferrals (the budget is time, not tries).",
    )
    redispatches = models.PositiveIntegerField(
        default=0,
        help_text="Messages the reconciler re-sent since a worker last picked the task up "
        "(each doubles the wait before the next).",
    )
    priority_sent = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Priority of the latest message (0 runs first)."
    )
    variant = models.ForeignKey(
        "generation.ExperimentVariant",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="tasks",
        help_text="The A/B experiment variant this task was generated with, if any.",
        db_index=False,
    )
    moderation = models.CharField(
        max_length=16, choices=ModerationStatus.choices, default="", blank=True
    )
    moderation_categories = models.JSONField(
        default=list, blank=True, help_text="The categories moderation flagged the output for."
    )
    moderation_reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    moderation_reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "course_generation_tasks"
        ordering = ["job", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "kind", "key"], name="uniq_task_per_job")
        ]
        # Every claim and every record rewrites a task's row with a new status, so each index
        # gets an entry at each of them: the indexes are the unique one (which serves the job's
        # lookups) and partial ones over the few rows something looks for across jobs: open
        # tasks (the reconciler) and failed ones (the admin's filter), content under review,
        # experiment variants, reviewers (a user's deletion). With the ten full indexes there
        # were, a claim cost ~10 % and a record ~4 % more PostgreSQL CPU.
        indexes = [
            models.Index(
                fields=["status", "lease_expires_at"],
                condition=models.Q(
                    status__in=[TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.FAILED]
                ),
                name="task_live_or_failed",
            ),
            models.Index(
                fields=["moderation"],
                condition=models.Q(moderation__in=MODERATION_REVIEWED),
                name="task_under_review",
            ),
            models.Index(
                fields=["variant"],
                condition=models.Q(variant__isnull=False),
                name="task_variant",
            ),
            models.Index(
                fields=["moderation_reviewed_by"],
                condition=models.Q(moderation_reviewed_by__isnull=False),
                name="task_reviewed_by",
            ),
        ]
        verbose_name = "task"

    def __str__(self) -> str:
        return f"{self.kind} {self.key} [{self.status}]"

    @property
    def task_kind(self) -> TaskKind:
        return TaskKind(self.kind)


class GenerationTaskVersion(models.Model):
    """One output a task has had. Written when a task is regenerated: the output it had becomes
    version 1 (if no version exists yet) and the new one the next version, so the latest version
    is always the task's current output and the earlier ones are kept."""

    task = models.ForeignKey(GenerationTask, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    output = models.JSONField()
    model = models.CharField(max_length=100)
    prompt_version = models.CharField(max_length=32)
    instruction = models.TextField(blank=True, help_text="What the regeneration was asked for.")
    input_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=8, default=Decimal(0))
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "course_generation_task_versions"
        ordering = ["task", "number"]
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="uniq_version_per_task")
        ]
        verbose_name = "task version"

    def __str__(self) -> str:
        return f"version {self.number} of {self.task}"


class RegenerationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


REGENERATION_OPEN = (RegenerationStatus.PENDING, RegenerationStatus.RUNNING)


class RegenerationSource(models.TextChoices):
    API = "api", "API (the course's owner or staff)"
    ADMIN = "admin", "Admin action"
    JUDGE = "judge", "LLM judge (a lesson below its thresholds)"


class RegenerationRequest(models.Model):
    """A request to regenerate one task of a finished course (or one part of its output).

    Its id is what the message carries, so a message delivered twice runs the request once,
    and a request whose worker died is found by the reconciler (running with an expired lease)
    and run again. The task itself stays succeeded throughout: its current output stands until
    the new version replaces it. At most one request per task is open at a time."""

    task = models.ForeignKey(
        GenerationTask, on_delete=models.CASCADE, related_name="regeneration_requests"
    )
    source = models.CharField(max_length=32, choices=RegenerationSource.choices)
    part = models.CharField(
        max_length=64, blank=True, help_text="The part to regenerate (questions.2); empty: whole."
    )
    instruction = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    status = models.CharField(
        max_length=16, choices=RegenerationStatus.choices, default=RegenerationStatus.PENDING
    )
    version = models.PositiveIntegerField(
        null=True, blank=True, help_text="The version it produced, once recorded."
    )
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    runs = models.PositiveIntegerField(default=0, help_text="Times a worker claimed it.")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    redispatches = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "course_generation_regenerations"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["task"],
                condition=models.Q(status__in=["pending", "running"]),
                name="uniq_open_regeneration_per_task",
            )
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]
        verbose_name = "regeneration request"

    def __str__(self) -> str:
        return f"regeneration {self.pk} of {self.task_id} [{self.status}]"


class QueueState(models.TextChoices):
    QUEUED = "queued", "Queued"
    CLAIMED = "claimed", "Claimed"
    DONE = "done", "Done"
    CANCELLED = "cancelled", "Cancelled"


class QueueEntry(models.Model):
    job = models.OneToOneField(
        CourseGenerationJob, on_delete=models.CASCADE, related_name="queue_entry"
    )
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    state = models.CharField(max_length=16, choices=QueueState.choices, default=QueueState.QUEUED)
    enqueued_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "course_generation_queue"
        ordering = ["priority", "enqueued_at"]
        indexes = [models.Index(fields=["state", "priority", "enqueued_at"])]
        verbose_name = "queue entry"
        verbose_name_plural = "queue"

    def __str__(self) -> str:
        return f"{self.job_id} [{self.state}, priority {self.priority}]"


class CourseEvaluation(models.Model):
    """One evaluation of a finished course, or of one of its tasks: a score per criterion, the
    overall, and what to improve. Three evaluators write here: `heuristic-v1` scores every course
    at finalize (and again after a regeneration; the job keeps the latest in `quality_score`),
    `llm-judge-v1` each lesson and then the course, and `human` a teacher's rating (one current
    rating per user and target: a new one supersedes the previous)."""

    job = models.ForeignKey(
        CourseGenerationJob, on_delete=models.CASCADE, related_name="evaluations"
    )
    task = models.ForeignKey(
        GenerationTask,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="evaluations",
        help_text="The task evaluated; empty when the evaluation is of the whole course.",
    )
    evaluator = models.CharField(max_length=64, help_text="Which evaluator, and its version.")
    overall = models.FloatField(help_text="Weighted mean of the criteria (0-1).")
    criteria = models.JSONField(help_text="Score per criterion (0-1).")
    feedback = models.JSONField(default=list, blank=True, help_text="What to improve.")
    details = models.JSONField(
        default=dict,
        blank=True,
        help_text="The judge's verdict (1-5 scores, justifications, evidence), or the rating.",
    )
    rated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="course_ratings",
        help_text="The teacher who gave a human rating.",
    )
    rating = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1-5 (human).")
    flags = models.JSONField(default=list, blank=True, help_text="Problems a teacher flagged.")
    superseded_at = models.DateTimeField(
        null=True, blank=True, help_text="When a newer rating by the same person replaced it."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "course_generation_evaluations"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["job", "-created_at"]),
            models.Index(fields=["evaluator", "-created_at"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(overall__gte=0, overall__lte=1),
                name="evaluation_overall_0_to_1",
            ),
            models.CheckConstraint(
                condition=models.Q(rating__isnull=True) | models.Q(rating__gte=1, rating__lte=5),
                name="evaluation_rating_1_to_5",
            ),
            # One current rating per person and target (the course, or one task).
            models.UniqueConstraint(
                fields=["job", "rated_by"],
                condition=models.Q(
                    rated_by__isnull=False, task__isnull=True, superseded_at__isnull=True
                ),
                name="uniq_current_course_rating",
            ),
            models.UniqueConstraint(
                fields=["task", "rated_by"],
                condition=models.Q(
                    rated_by__isnull=False, task__isnull=False, superseded_at__isnull=True
                ),
                name="uniq_current_task_rating",
            ),
        ]
        verbose_name = "evaluation"

    def __str__(self) -> str:
        target = f"task {self.task_id}" if self.task_id else str(self.job_id)
        return f"{target}: {self.overall:.2f} ({self.evaluator})"


class IdempotencyState(models.TextChoices):
    IN_FLIGHT = "in_flight", "In flight"
    COMPLETED = "completed", "Completed"


class IdempotencyKey(models.Model):
    """An `Idempotency-Key` a client sent on submit, and the first response it got."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(
        max_length=16, choices=IdempotencyState.choices, default=IdempotencyState.IN_FLIGHT
    )
    job = models.ForeignKey(CourseGenerationJob, null=True, blank=True, on_delete=models.CASCADE)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "course_generation_idempotency_keys"
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="uniq_idempotency_key_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.state})"


# The quality judge's runs and the A/B experiments live in their own module (this one stays
# readable); imported here so that Django registers them with the app.
from generation.cache_models import CacheEntry, CacheFalseHit  # noqa: E402, F401
from generation.provider_models import ProviderConstraint  # noqa: E402, F401
from generation.quality_models import (  # noqa: E402, F401
    Experiment,
    ExperimentStatus,
    ExperimentVariant,
    JudgeRun,
    JudgeRunStatus,
    PrimaryMetric,
    Promotion,
)
