"""Input and output serializers for the generation API."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from pydantic import ValidationError as PydanticValidationError
from rest_framework import serializers

from accounts.models import BaseClass
from accounts.selectors import class_of_member_get
from coursegen.drf import ClosedOutputSerializer, StrictCharField, StrictIntegerField
from generation.exports import FORMATS
from generation.models import (
    MODERATION_WITHHELD,
    CourseEvaluation,
    CourseGenerationJob,
    GenerationTask,
    GenerationTaskVersion,
    JobStatus,
    RegenerationRequest,
    Urgency,
)
from generation.providers import MODERATION_CATEGORIES
from generation.schemas import CourseRequest, Level, control_characters_refused


def multi_line_text(value: str) -> str:
    """A free-text field's value (newlines and tabs allowed), or its field error naming the
    first control character: no terminal escapes or bidi overrides in what others read."""
    try:
        return control_characters_refused(value, allowed="\n\r\t")
    except ValueError as exc:
        raise serializers.ValidationError(str(exc)) from exc


def _visible_text(value: str) -> str:
    """A name that shows: a topic of zero-width spaces passed the length check and became a
    course titled with nothing a reader can see."""
    if not any(unicodedata.category(char)[0] in "LN" for char in value):
        raise serializers.ValidationError("must contain a letter or a digit")
    return value


LESSON_KEY = re.compile(r"\bm\d+\.l\d+\b")  # how evaluation lines name a lesson: "lesson m1.l2"
COST_QUANTUM = Decimal(10) ** -GenerationTask._meta.get_field("cost_usd").decimal_places
JOB_COST_QUANTUM = Decimal(10) ** -CourseGenerationJob._meta.get_field("cost_usd").decimal_places


class JobSubmitInputSerializer(serializers.Serializer):
    base_class = serializers.UUIDField(help_text="The class the course is for.")
    topic = StrictCharField(min_length=3, max_length=200)
    audience = StrictCharField(min_length=3, max_length=200, required=False)
    level = serializers.ChoiceField(choices=[lv.value for lv in Level], required=False)
    num_modules = StrictIntegerField(min_value=1, max_value=12, required=False)
    lessons_per_module = StrictIntegerField(min_value=1, max_value=10, required=False)
    questions_per_lesson = StrictIntegerField(min_value=1, max_value=15, required=False)
    language = serializers.RegexField(r"^[a-z]{2}(-[A-Z]{2})?$", required=False)
    instructions = StrictCharField(max_length=2000, required=False, allow_blank=True)
    urgency = serializers.ChoiceField(
        choices=Urgency.choices,
        default=Urgency.NOW,
        help_text='"now" (default): live calls. "batch": through the provider\'s Batch API at '
        "half the price, finished within a day (docs/batch.md); roles in "
        "COURSEGEN_BATCH_ROLES only (403 otherwise).",
    )

    def validate_topic(self, value: str) -> str:
        return _visible_text(value)

    def validate_audience(self, value: str) -> str:
        return _visible_text(value)

    def validate_base_class(self, value: Any) -> BaseClass:
        base_class = class_of_member_get(user=self.context["request"].user, class_id=value)
        if base_class is None:
            raise serializers.ValidationError("No such class in your organisations.")
        return base_class

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in attrs.items() if k not in ("base_class", "urgency")}
        try:
            attrs["course_request"] = CourseRequest.model_validate(fields)
        except PydanticValidationError as exc:
            raise serializers.ValidationError(
                {
                    ".".join(map(str, e["loc"])) or "non_field_errors": [e["msg"]]
                    for e in exc.errors()
                }
            ) from exc
        return attrs


class TaskOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = GenerationTask
        fields = [
            "id",
            "kind",
            "key",
            "status",
            "tier",
            "model",
            "prompt_version",
            "runs",
            "attempts",
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "cost_usd",
            "reask_cost_usd",
            "duration_ms",
            "validation_errors",
            "error",
            "moderation",
            "moderation_categories",
            "started_at",
            "finished_at",
        ]


class TaskStatusSerializer(TaskOutputSerializer):
    """The tasks on a job's status page (43 in a 4x3 course), which clients poll: attributes are
    read directly instead of through DRF's machinery per field (a large part of a poll's CPU).
    The output is the same as TaskOutputSerializer's (a test checks)."""

    def to_representation(self, instance: GenerationTask) -> dict[str, Any]:
        return {name: _plain(getattr(instance, name)) for name in self.Meta.fields}


def _plain(value: Any) -> Any:
    """What DRF's DateTimeField (UTC) and DecimalField (coerce_to_string) would output."""
    if isinstance(value, datetime):
        text = timezone.localtime(value).isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, Decimal):
        return format(value.quantize(COST_QUANTUM), "f")
    return value


class FieldsOnceMixin(serializers.Serializer):
    """An output serializer whose fields are built once per class, not per object: DRF rebuilds
    them (model introspection, deep copies) for every object it renders, a large part of a submit
    and of a status poll. The fields are stateless when rendering; method fields are called on
    this serializer, so they see its context. The output is DRF's (a test checks)."""

    _built_fields: ClassVar[list[serializers.Field]]

    def to_representation(self, instance: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in self._fields_once():
            name = str(field.field_name)  # bound: never None
            if isinstance(field, serializers.SerializerMethodField):
                out[name] = getattr(self, str(field.method_name))(instance)
                continue
            value = field.get_attribute(instance)
            out[name] = None if value is None else field.to_representation(value)
        return out

    @classmethod
    def _fields_once(cls) -> list[serializers.Field]:
        if "_built_fields" not in cls.__dict__:  # per class: a subclass has its own fields
            cls._built_fields = [f for f in cls().fields.values() if not f.write_only]
        return cls._built_fields


class JobOutputSerializer(FieldsOnceMixin, serializers.ModelSerializer):
    topic = StrictCharField(read_only=True)
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    base_class = serializers.UUIDField(source="base_class_id", read_only=True)
    organisation = serializers.UUIDField(source="organisation_id", read_only=True)
    reask_share = serializers.FloatField(
        read_only=True, help_text="Share of the cost spent on re-asks, part repairs, failures."
    )
    cost_breakdown = serializers.SerializerMethodField(
        help_text="USD: generation (first attempts), repairs (re-asks, part repairs, failures), "
        "judge (the quality judge's calls, not in cost_usd) and their total; batch_saving_usd: "
        "what the job's Batch API answers would have cost more live (docs/batch.md)."
    )

    class Meta:
        model = CourseGenerationJob
        fields = [
            "id",
            "topic",
            "status",
            "priority",
            "urgency",
            "progress",
            "owner",
            "organisation",
            "base_class",
            "request",
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "cost_usd",
            "reask_cost_usd",
            "reask_share",
            "cost_breakdown",
            "quality_score",
            "judge_status",
            "judge_score",
            "judge_cost_usd",
            "correlation_id",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_cost_breakdown(self, job: CourseGenerationJob) -> dict[str, str]:
        parts = {
            "generation_usd": job.cost_usd - job.reask_cost_usd,
            "repairs_usd": job.reask_cost_usd,
            "judge_usd": job.judge_cost_usd,
            "total_usd": job.cost_usd + job.judge_cost_usd,
            "batch_saving_usd": _batch_saving(job),
        }
        return {
            name: format(value.quantize(JOB_COST_QUANTUM), "f") for name, value in parts.items()
        }


def _batch_saving(job: CourseGenerationJob) -> Decimal:
    from generation.batch_selectors import job_batch_saving, owner_batch_work

    # No query for the jobs that ran live, unless their judge or regenerations may go by batch.
    if job.urgency != Urgency.BATCH and not owner_batch_work():
        return Decimal(0)

    return job_batch_saving(job_id=job.pk)


class _WaitingFieldsMixin(serializers.Serializer):
    """What a client waiting for its course needs beyond the row: where it is in the queue and
    where its course will be."""

    queue_position = serializers.SerializerMethodField()
    course_url = serializers.SerializerMethodField()

    def get_queue_position(self, job: CourseGenerationJob) -> int | None:
        from generation.selectors import queue_position

        if hasattr(job, "known_queue_position"):  # read with the row (selectors.jobs_progress)
            known: int | None = job.known_queue_position
            return known
        return queue_position(job=job)

    def get_course_url(self, job: CourseGenerationJob) -> str | None:
        has_course = getattr(job, "has_course", None)  # annotated by the status selectors
        if not (job.course is not None if has_course is None else has_course):
            return None
        return f"/api/jobs/{job.id}/course/"


class JobDetailOutputSerializer(_WaitingFieldsMixin, JobOutputSerializer):
    tasks = TaskStatusSerializer(many=True, read_only=True)
    course_page_url = serializers.SerializerMethodField(
        help_text="The course as a page for people (/courses/<id>/), once it is ready."
    )
    export_urls = serializers.SerializerMethodField(
        help_text="Format name to download URL (md, html, pdf, qti, scorm), once it is ready."
    )

    class Meta(JobOutputSerializer.Meta):
        fields = [
            *JobOutputSerializer.Meta.fields,
            "queue_position",
            "course_url",
            "course_page_url",
            "export_urls",
            "tasks",
        ]

    def get_course_page_url(self, job: CourseGenerationJob) -> str | None:
        return None if self.get_course_url(job) is None else f"/courses/{job.id}/"

    def get_export_urls(self, job: CourseGenerationJob) -> dict[str, str] | None:
        if self.get_course_url(job) is None:
            return None
        return {name: f"/api/jobs/{job.id}/export/{name}/" for name in FORMATS}


class JobProgressOutputSerializer(
    FieldsOnceMixin, _WaitingFieldsMixin, serializers.ModelSerializer
):
    """What a client waiting for its course polls: no tasks, no documents."""

    class Meta:
        model = CourseGenerationJob
        fields = [
            "id",
            "status",
            "progress",
            "queue_position",
            "course_url",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]


class ContentFlaggedOutputSerializer(ClosedOutputSerializer):
    """A request refused by content moderation (docs/safety.md); nothing was created."""

    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["content_flagged"])
    categories = serializers.ListField(
        child=serializers.ChoiceField(choices=list(MODERATION_CATEGORIES))
    )
    flagged_fields = serializers.ListField(
        child=serializers.CharField(), help_text="The request's fields that were flagged."
    )


class CourseNotReadyOutputSerializer(ClosedOutputSerializer):
    """409: the job has no course yet (or it failed or was cancelled)."""

    detail = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices, help_text="The job's status.")


class CourseHeldOutputSerializer(ClosedOutputSerializer):
    """409 (code content_held): part of the course is held for content review."""

    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["content_held"])
    held = serializers.ListField(child=serializers.CharField(), help_text="The held tasks' keys.")


class UnknownExportFormatOutputSerializer(ClosedOutputSerializer):
    """404: no such export format."""

    detail = serializers.CharField()
    formats = serializers.ListField(
        child=serializers.ChoiceField(choices=list(FORMATS)), help_text="The formats there are."
    )


class TaskRegenerateInputSerializer(serializers.Serializer):
    instruction = StrictCharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=True,
        help_text='What the new version should do differently, e.g. "simpler examples". '
        "Newlines and tabs are allowed; other control characters are not.",
    )

    def validate_instruction(self, value: str) -> str:
        return multi_line_text(value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs


class TaskVersionOutputSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(
        source="created_by.get_username", read_only=True, default=None, allow_null=True
    )

    class Meta:
        model = GenerationTaskVersion
        fields = [
            "number",
            "model",
            "prompt_version",
            "instruction",
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "cost_usd",
            "created_by",
            "created_at",
        ]


class RegenerationOutputSerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(
        source="requested_by.get_username", read_only=True, default=None, allow_null=True
    )

    class Meta:
        model = RegenerationRequest
        fields = ["id", "status", "source", "requested_by", "instruction", "version", "error"]
        read_only_fields = fields


class TaskRegenerateOutputSerializer(TaskOutputSerializer):
    versions = TaskVersionOutputSerializer(many=True, read_only=True)
    output = serializers.SerializerMethodField(
        help_text="The task's current output; null while output moderation holds it (or staff "
        "rejected it): held text is not published until staff release it (docs/safety.md)."
    )
    regeneration = serializers.SerializerMethodField(
        help_text="The latest regeneration request of the task: pending or running until the "
        "new version is in, then succeeded (or failed, the previous version kept)."
    )

    class Meta(TaskOutputSerializer.Meta):
        fields = [*TaskOutputSerializer.Meta.fields, "output", "versions", "regeneration"]

    @extend_schema_field(serializers.JSONField(allow_null=True))
    def get_output(self, task: GenerationTask) -> Any:
        return None if task.moderation in MODERATION_WITHHELD else task.output

    @extend_schema_field(RegenerationOutputSerializer(allow_null=True))
    def get_regeneration(self, task: GenerationTask) -> dict[str, Any] | None:
        latest = task.regeneration_requests.order_by("-created_at", "-pk").first()
        return RegenerationOutputSerializer(latest).data if latest else None


class EvaluationOutputSerializer(serializers.ModelSerializer):
    task_key = serializers.CharField(
        source="task.key", default=None, read_only=True, allow_null=True
    )

    class Meta:
        model = CourseEvaluation
        fields = [
            "evaluator",
            "task",
            "task_key",
            "overall",
            "criteria",
            "feedback",
            "details",
            "created_at",
        ]

    def to_representation(self, instance: CourseEvaluation) -> dict[str, Any]:
        """Text that moderation holds (or staff rejected) is not published until staff release it
        (docs/safety.md), and evaluations quote lessons: the judge's verdict its evidence, the
        heuristic's lines a repeated question's stem (it scores held parts too). For each lesson
        with withheld content (the view's `withheld_lessons`) its verdict and the lines naming it
        are left out; the scores stay."""
        data: dict[str, Any] = super().to_representation(instance)
        withheld = self.context.get("withheld_lessons", frozenset())
        task = instance.task
        if task is not None and (task.key in withheld or task.moderation in MODERATION_WITHHELD):
            data["feedback"] = []
            data["details"] = {
                **{k: v for k, v in instance.details.items() if k != "verdict"},
                "withheld": True,
            }
            return data
        named = [set(LESSON_KEY.findall(line)) & withheld for line in instance.feedback]
        left_out = sorted(set().union(*named))
        if left_out:
            data["feedback"] = [
                line for line, keys in zip(instance.feedback, named, strict=True) if not keys
            ]
            data["details"] = {**instance.details, "withheld_lessons": left_out}
        return data
