"""Input and output serializers of the quality API: teachers' ratings and A/B experiments."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from coursegen.drf import StrictCharField, StrictIntegerField
from generation.models import (
    CourseEvaluation,
    Experiment,
    ExperimentVariant,
    GenerationTask,
    Promotion,
)
from generation.quality import report
from generation.rubric import FEEDBACK_FLAGS
from generation.serializers import multi_line_text


class _NoUnknownFields(serializers.Serializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs


class FeedbackInputSerializer(_NoUnknownFields):
    rating = StrictIntegerField(min_value=1, max_value=5, help_text="1 (poor) to 5 (great).")
    task = StrictIntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="A task of this job to rate on its own; empty rates the whole course.",
    )
    comment = StrictCharField(
        max_length=2000, required=False, allow_blank=True, default="", trim_whitespace=True
    )
    flags = serializers.ListField(
        child=serializers.ChoiceField(choices=list(FEEDBACK_FLAGS.items())),
        required=False,
        default=list,
        max_length=len(FEEDBACK_FLAGS),
        help_text="Problems to flag: " + ", ".join(FEEDBACK_FLAGS) + ".",
    )

    def validate_task(self, value: int | None) -> GenerationTask | None:
        if value is None:
            return None
        task = GenerationTask.objects.filter(job=self.context["job"], pk=value).first()
        if task is None:
            raise serializers.ValidationError("No such task in this job.")
        return task

    def validate_comment(self, value: str) -> str:
        return multi_line_text(value)  # other teachers read it (admin, quality pages)

    def validate_flags(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Each flag at most once.")
        return value


class FeedbackOutputSerializer(serializers.ModelSerializer):
    target = serializers.SerializerMethodField(help_text='"course", or the task rated.')
    task_kind = serializers.CharField(
        source="task.kind", default=None, read_only=True, allow_null=True
    )
    task_key = serializers.CharField(
        source="task.key", default=None, read_only=True, allow_null=True
    )
    comment = serializers.SerializerMethodField()
    rated_by = serializers.CharField(source="rated_by.get_username", read_only=True)

    class Meta:
        model = CourseEvaluation
        fields = [
            "id",
            "target",
            "task",
            "task_kind",
            "task_key",
            "rating",
            "comment",
            "flags",
            "rated_by",
            "created_at",
        ]

    def get_target(self, evaluation: CourseEvaluation) -> str:
        return "task" if evaluation.task_id else "course"

    def get_comment(self, evaluation: CourseEvaluation) -> str:
        return str(evaluation.details.get("comment", ""))


class VariantOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = ExperimentVariant
        fields = ["id", "name", "prompt_version", "model", "weight"]


class PromotionOutputSerializer(serializers.ModelSerializer):
    variant = serializers.CharField(source="variant.name", read_only=True)
    promoted_by = serializers.CharField(source="promoted_by.get_username", read_only=True)

    class Meta:
        model = Promotion
        fields = ["variant", "task_kind", "prompt_version", "model", "promoted_by", "promoted_at"]


class ExperimentOutputSerializer(serializers.ModelSerializer):
    variants = VariantOutputSerializer(many=True, read_only=True)
    promotions = serializers.SerializerMethodField()
    stopped_by = serializers.CharField(
        source="stopped_by.get_username", read_only=True, default=None, allow_null=True
    )

    class Meta:
        model = Experiment
        fields = [
            "id",
            "name",
            "description",
            "task_kind",
            "primary_metric",
            "status",
            "created_at",
            "started_at",
            "stopped_at",
            "stopped_by",
            "variants",
            "promotions",
        ]

    def get_promotions(self, experiment: Experiment) -> list[dict[str, Any]]:
        promotions = Promotion.objects.filter(variant__experiment=experiment).select_related(
            "variant", "promoted_by"
        )
        return list(PromotionOutputSerializer(promotions, many=True).data)


class ExperimentReportOutputSerializer(ExperimentOutputSerializer):
    report = serializers.SerializerMethodField(
        help_text="Per variant: courses, tasks, quality per dollar and each metric's mean with "
        "its 95% bootstrap interval (low, high, n); the leader on the primary metric, if one's "
        "interval lies beyond every other's; the ranking by quality per dollar."
    )

    class Meta(ExperimentOutputSerializer.Meta):
        fields = [*ExperimentOutputSerializer.Meta.fields, "report"]

    def get_report(self, experiment: Experiment) -> dict[str, Any]:
        return report.experiment_report(experiment).as_dict()
