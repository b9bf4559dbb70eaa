"""Rows of the quality loop: the judge's runs, A/B experiments, their variants, and promotions.

Imported by generation/models.py (Django registers models from there); these refer to the other
generation models by name ("generation.CourseGenerationJob") so that neither module imports the
other at load time.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from generation.schemas import TaskKind


class JudgeRunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class JudgeRun(models.Model):
    """The judge's work on one lesson of a finished course: claimed with a lease like a task, so a
    repeated message finds it claimed or done and pays for nothing. One run judges the lesson,
    regenerates it at most once when it is below threshold, and judges it again."""

    job = models.ForeignKey(
        "generation.CourseGenerationJob", on_delete=models.CASCADE, related_name="judge_runs"
    )
    lesson_key = models.CharField(max_length=32, help_text="m2.l3")
    task = models.ForeignKey(
        "generation.GenerationTask",
        on_delete=models.CASCADE,
        related_name="judge_runs",
        help_text="The lesson's section task (its evaluations point at it).",
    )
    status = models.CharField(
        max_length=16,
        choices=JudgeRunStatus.choices,
        default=JudgeRunStatus.PENDING,
        db_index=True,
    )
    model = models.CharField(max_length=100, blank=True)
    rounds = models.PositiveSmallIntegerField(default=0, help_text="Verdicts recorded (1 or 2).")
    regenerated = models.JSONField(
        default=list, blank=True, help_text="Kinds of the tasks regenerated after round 1."
    )
    below_threshold = models.BooleanField(
        null=True, blank=True, help_text="The final verdict's standing (empty until judged)."
    )
    score = models.FloatField(null=True, blank=True, help_text="The final verdict's overall.")
    runs = models.PositiveIntegerField(default=0, help_text="Times a worker claimed this run.")
    attempts = models.PositiveIntegerField(default=0, help_text="Provider calls made.")
    input_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=8, default=Decimal(0))
    deferrals = models.PositiveIntegerField(default=0)
    deferred_since = models.DateTimeField(
        null=True, blank=True, help_text="First deferral (the budget is time, like a task's)."
    )
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "course_generation_judge_runs"
        ordering = ["job", "lesson_key"]
        constraints = [
            models.UniqueConstraint(fields=["job", "lesson_key"], name="uniq_judge_run_per_lesson")
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]
        verbose_name = "judge run"

    def __str__(self) -> str:
        return f"judge {self.lesson_key} of {self.job_id} [{self.status}]"


# --- A/B experiments ------------------------------------------------------------------------------
class ExperimentStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


class PrimaryMetric(models.TextChoices):
    JUDGE_OVERALL = "judge_overall", "Judge: overall"
    JUDGE_OBJECTIVES_TAUGHT = "judge_objectives_taught", "Judge: objectives taught"
    JUDGE_ACCURACY = "judge_accuracy", "Judge: accuracy"
    JUDGE_AUDIENCE_FIT = "judge_audience_fit", "Judge: fit to audience and level"
    JUDGE_QUESTION_QUALITY = "judge_question_quality", "Judge: question quality"
    JUDGE_CLARITY_EXAMPLES = "judge_clarity_examples", "Judge: clarity and examples"
    HUMAN_RATING = "human_rating", "Teachers' rating"
    HEURISTIC_OVERALL = "heuristic_overall", "Heuristic score"
    COST_PER_COURSE = "cost_per_course", "Cost per course (lower is better)"


class Experiment(models.Model):
    """An A/B test: jobs are split between variants by job id, for one task kind or all."""

    name = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    task_kind = models.CharField(
        max_length=32,
        blank=True,
        choices=[(k.value, k.value) for k in TaskKind],
        help_text="The task kind the variants apply to; empty for every kind.",
    )
    primary_metric = models.CharField(
        max_length=32, choices=PrimaryMetric.choices, default=PrimaryMetric.JUDGE_OVERALL
    )
    status = models.CharField(
        max_length=16, choices=ExperimentStatus.choices, default=ExperimentStatus.DRAFT
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        db_table = "course_generation_experiments"
        ordering = ["-created_at"]
        verbose_name = "experiment"

    def __str__(self) -> str:
        return f"{self.name} [{self.status}]"

    @property
    def scope(self) -> str:
        return self.task_kind or "all task kinds"


class ExperimentVariant(models.Model):
    """One arm of an experiment: a prompt version and/or a model, and its share of the traffic.
    Empty fields keep the default for the task kind."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(max_length=40)
    prompt_version = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    weight = models.PositiveIntegerField(default=1, help_text="Relative share of the jobs.")

    class Meta:
        db_table = "course_generation_experiment_variants"
        ordering = ["experiment", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="uniq_variant_name"),
            models.CheckConstraint(condition=models.Q(weight__gte=1), name="variant_weight_1_up"),
        ]
        verbose_name = "experiment variant"

    def __str__(self) -> str:
        return f"{self.experiment.name}/{self.name}"

    @property
    def label(self) -> str:
        parts = [self.prompt_version and f"prompt {self.prompt_version}", self.model]
        return ", ".join(p for p in parts if p) or "defaults"


class Promotion(models.Model):
    """A variant made the default from then on: new tasks of its kind (or every kind) use its
    prompt version and/or model. The latest promotion that sets a field wins."""

    variant = models.ForeignKey(
        ExperimentVariant, on_delete=models.PROTECT, related_name="promotions"
    )
    task_kind = models.CharField(max_length=32, blank=True, help_text="Empty: every kind.")
    prompt_version = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    promoted_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "course_generation_promotions"
        ordering = ["-promoted_at"]
        verbose_name = "promotion"

    def __str__(self) -> str:
        return f"{self.variant} promoted by {self.promoted_by} at {self.promoted_at:%Y-%m-%d %H:%M}"
