"""Admin screens of the quality loop: the judge's runs, teachers' ratings (the evaluations list is
generation/admin.py's; human ratings there are scoped to the organisations a staff member
teaches in or administers, superusers see all), and A/B experiments with their report page
(per-variant figures with intervals, a chart, stop and promote)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from generation.admin_base import ReadOnlyTabularInline
from generation.models import (
    CourseEvaluation,
    Experiment,
    ExperimentStatus,
    ExperimentVariant,
    JudgeRun,
    Promotion,
)
from generation.quality import charts, experiments, feedback, report
from generation.quality.stats import Interval
from generation.rubric import HUMAN_EVALUATOR, RUBRIC, Criterion
from generation.services import GenerationError

JUDGE_RUN_FIELDS: tuple[str, ...] = (
    "lesson_key",
    "status",
    "score",
    "below_threshold",
    "regenerated",
    "rounds",
    "model",
    "attempts",
    "output_tokens",
    "cost_usd",
    "error",
    "finished_at",
)


class JudgeRunInline(ReadOnlyTabularInline):
    model = JudgeRun
    fields = JUDGE_RUN_FIELDS
    verbose_name_plural = "LLM judge runs (one per lesson)"


RATING_FIELDS: tuple[str, ...] = (
    "created_at",
    "rated_by",
    "task",
    "rating",
    "flags",
    "feedback",
    "superseded_at",
)


class RatingInline(ReadOnlyTabularInline):
    """Teachers' ratings of the job, for staff of its organisation."""

    model = CourseEvaluation
    fields = RATING_FIELDS
    verbose_name = "teacher rating"
    verbose_name_plural = "teachers' ratings"

    def get_queryset(self, request: HttpRequest) -> QuerySet[CourseEvaluation]:
        ratings = super().get_queryset(request).filter(evaluator=HUMAN_EVALUATOR)
        return feedback.ratings_for_staff(user=request.user, evaluations=ratings)  # type: ignore[arg-type]


@admin.register(JudgeRun)
class JudgeRunAdmin(admin.ModelAdmin):
    """The judge's work per lesson: sort by score, filter the ones below threshold."""

    organisation_path = "job__organisation"  # whose rows: accounts/tenancy.py
    list_display = [
        "job",
        "lesson_key",
        "status",
        "score",
        "below_threshold",
        "regenerated",
        "rounds",
        "model",
        "cost_usd",
        "finished_at",
    ]
    list_filter = ["status", "below_threshold", "model", "created_at"]
    search_fields = ["job__id", "lesson_key"]
    list_select_related = ["job"]
    readonly_fields = [f.name for f in JudgeRun._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[JudgeRun]:
        return super().get_queryset(request).defer("job__course", "job__outline")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- A/B experiments ------------------------------------------------------------------------------
class VariantInline(admin.TabularInline):
    model = ExperimentVariant
    fields = ("name", "prompt_version", "model", "weight")
    extra = 2

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Variants are fixed once the experiment has started: its results refer to them.
        return super().has_change_permission(request, obj) and _draft(obj)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and _draft(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and _draft(obj)


def _draft(experiment: Experiment | None) -> bool:
    return experiment is None or experiment.status == ExperimentStatus.DRAFT


REPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("judge_overall", "Judge overall"),
    *((f"judge_{c.value}", RUBRIC[c].title) for c in Criterion),
    ("human_rating", "Teachers"),
    ("heuristic_overall", "Heuristic"),
    ("cost_per_course", "$ per course"),
    ("cost_per_task", "$ per task"),
    ("latency_ms", "ms per task"),
    ("failure_rate", "Failure rate"),
    ("repair_rate", "Repair rate"),
)


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    """Create an experiment with its variants (draft), start it, read its report, stop it or
    promote a variant from the report."""

    organisation_path = None  # platform-only (accounts/tenancy.py)
    list_display = ["name", "scope", "status", "primary_metric", "started_at", "report_link"]
    list_filter = ["status", "task_kind"]
    search_fields = ["name", "description"]
    inlines = [VariantInline]
    actions = ["start_experiments", "stop_experiments"]
    readonly_fields = ["status", "created_by", "started_at", "stopped_at", "stopped_by"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fixed = ["name", "task_kind", "primary_metric"]  # the results refer to them
        return [*self.readonly_fields, *([] if _draft(obj) else fixed)]

    def save_model(self, request: HttpRequest, obj: Experiment, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)

    @admin.display(description="report")
    def report_link(self, experiment: Experiment) -> str:
        url = reverse("admin:generation_experiment_report", args=[experiment.pk])
        return format_html('<a href="{}">report</a>', url)

    @admin.action(description="Start the selected draft experiments", permissions=["change"])
    def start_experiments(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset:
            self._act(request, experiments.experiment_start, experiment.pk, "started")

    @admin.action(description="Stop the selected running experiments", permissions=["change"])
    def stop_experiments(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset:
            self._act(request, experiments.experiment_stop, experiment.pk, "stopped")

    def _act(self, request: HttpRequest, service: Any, experiment_id: int, done: str) -> bool:
        try:
            experiment = service(experiment_id=experiment_id, by=request.user)
        except GenerationError as exc:
            self.message_user(request, str(exc), level=messages.WARNING)
            return False
        self.message_user(request, f"Experiment {experiment.name} {done}.")
        return True

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/report/", wrap(self.report_view), name="generation_experiment_report"),
            path("<int:pk>/stop/", wrap(self.stop_view), name="generation_experiment_stop"),
            path(
                "<int:pk>/promote/<int:variant_id>/",
                wrap(self.promote_view),
                name="generation_experiment_promote",
            ),
            *super().get_urls(),
        ]

    def report_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        experiment = self.get_object(request, str(pk))
        if experiment is None or not self.has_view_permission(request, experiment):
            raise Http404("No such experiment.")
        result = report.experiment_report(experiment)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "experiment": experiment,
            **_report_context(result),
            "can_promote": experiment.status != ExperimentStatus.DRAFT
            and self.has_change_permission(request, experiment),
            "can_stop": experiment.status == ExperimentStatus.RUNNING
            and self.has_change_permission(request, experiment),
            "promotions": Promotion.objects.filter(variant__experiment=experiment)
            .select_related("variant", "promoted_by")
            .order_by("-promoted_at"),
        }
        return TemplateResponse(request, "admin/generation/experiment/report.html", context)

    def stop_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        self._post_only(request, pk)
        self._act(request, experiments.experiment_stop, pk, "stopped")
        return HttpResponseRedirect(reverse("admin:generation_experiment_report", args=[pk]))

    def promote_view(self, request: HttpRequest, pk: int, variant_id: int) -> HttpResponse:
        self._post_only(request, pk)
        variant = ExperimentVariant.objects.filter(pk=variant_id, experiment_id=pk).first()
        if variant is None:
            raise Http404("No such variant in this experiment.")
        try:
            experiments.variant_promote(variant_id=variant.pk, by=request.user)  # type: ignore[arg-type]
        except GenerationError as exc:
            self.message_user(request, str(exc), level=messages.WARNING)
        else:
            self.message_user(request, f"{variant.name} ({variant.label}) is the default now.")
        return HttpResponseRedirect(reverse("admin:generation_experiment_report", args=[pk]))

    def _post_only(self, request: HttpRequest, pk: int) -> None:
        experiment = self.get_object(request, str(pk))
        if experiment is None or not self.has_change_permission(request, experiment):
            raise PermissionDenied
        if request.method != "POST":
            raise PermissionDenied("POST only")


def _report_context(result: report.ExperimentReport) -> dict[str, Any]:
    primary = result.primary
    cost = primary in report.LOWER_IS_BETTER
    return {
        "report": result,
        "primary_label": dict(REPORT_COLUMNS).get(primary, primary),
        "lower_is_better": cost,
        "columns": REPORT_COLUMNS,
        "rows": [
            {"result": r, "cells": [_cell(name, r.metrics[name]) for name, _ in REPORT_COLUMNS]}
            for r in result.variants
        ],
        "charts": [
            charts.intervals(
                "chart-primary",
                f"{dict(REPORT_COLUMNS).get(primary, primary)} (mean, 95% interval)",
                [(r.variant.name, r.metrics[primary]) for r in result.variants],
                fmt="{:.4f}" if cost else "{:.2f}",
            ),
            charts.intervals(
                "chart-cost",
                "Cost per course, USD (mean, 95% interval)",
                [(r.variant.name, r.metrics["cost_per_course"]) for r in result.variants],
                fmt="{:.4f}",
            ),
        ],
        "simulated": JudgeRun.objects.filter(
            job__tasks__variant__experiment=result.experiment
        ).exists()
        and CourseEvaluation.objects.filter(
            job__tasks__variant__experiment=result.experiment, details__simulated=True
        ).exists(),
    }


def _cell(name: str, interval: Interval) -> str:
    if interval.mean is None:
        return "—"
    digits = 0 if name == "latency_ms" else 5 if name.startswith("cost") else 2
    return f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


@admin.register(Promotion)
class PromotionAdmin(admin.ModelAdmin):
    """Who made which variant the default, and when."""

    organisation_path = None  # platform-only (accounts/tenancy.py)
    list_display = ["variant", "task_kind", "prompt_version", "model", "promoted_by", "promoted_at"]
    list_select_related = ["variant__experiment", "promoted_by"]
    readonly_fields = [f.name for f in Promotion._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # promote from an experiment's report

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the record of who changed the defaults
