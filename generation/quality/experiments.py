"""A/B experiments: create one (a task kind or all, two or more variants of prompt version and/or
model with traffic weights, a primary metric), start it, stop it, promote a variant.

While an experiment runs, each new job is assigned a variant by its id (generation/variants.py)
and the tasks it covers record it. Promoting a variant makes its prompt version and/or model the
default for the experiment's kinds from then on (a `Promotion` row: who and when) and stops the
experiment. At most one running experiment covers a kind, so a task never has two variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from generation.models import (
    Experiment,
    ExperimentStatus,
    ExperimentVariant,
    PrimaryMetric,
    Promotion,
)
from generation.pricing import price_for
from generation.prompts import prompt_versions
from generation.schemas import TaskKind
from generation.services import GenerationError
from monitoring.logs import log_event


@dataclass(frozen=True)
class VariantSpec:
    name: str
    prompt_version: str = ""
    model: str = ""
    weight: int = 1


def variant_problems(*, task_kind: str, variant: VariantSpec) -> list[str]:
    """Why a variant cannot run for the kind (or every kind, for an empty one)."""
    problems = []
    kinds = [TaskKind(task_kind)] if task_kind else list(TaskKind)
    if variant.prompt_version:
        missing = [k.value for k in kinds if variant.prompt_version not in prompt_versions(k)]
        if missing:
            problems.append(
                f"{variant.name}: prompt version {variant.prompt_version!r} does not exist for "
                f"{', '.join(missing)}"
            )
    if variant.model and price_for(variant.model) is None:
        problems.append(
            f"{variant.name}: no price for model {variant.model!r} "
            "(quality per dollar needs one; see generation/pricing.py)"
        )
    if variant.weight < 1:
        problems.append(f"{variant.name}: weight must be at least 1")
    return problems


@transaction.atomic
def experiment_create(
    *,
    name: str,
    task_kind: str,
    variants: Sequence[VariantSpec],
    primary_metric: str = PrimaryMetric.JUDGE_OVERALL,
    description: str = "",
    by: User | None = None,
) -> Experiment:
    """A draft experiment; `experiment_start` starts assigning jobs to it."""
    if task_kind and task_kind not in TaskKind.__members__.values():
        raise GenerationError(f"unknown task kind {task_kind!r}")
    if primary_metric not in PrimaryMetric.values:
        raise GenerationError(f"unknown primary metric {primary_metric!r}")
    if len(variants) < 2:
        raise GenerationError("an experiment needs at least two variants")
    if len({v.name for v in variants}) != len(variants):
        raise GenerationError("variant names must differ")
    problems = [p for v in variants for p in variant_problems(task_kind=task_kind, variant=v)]
    if problems:
        raise GenerationError("; ".join(problems))
    try:
        experiment = Experiment.objects.create(
            name=name,
            task_kind=task_kind,
            primary_metric=primary_metric,
            description=description,
            created_by=by,
        )
    except IntegrityError as exc:
        raise GenerationError(f"an experiment named {name!r} exists already") from exc
    ExperimentVariant.objects.bulk_create(
        ExperimentVariant(experiment=experiment, **vars(v)) for v in variants
    )
    return experiment


@transaction.atomic
def experiment_start(*, experiment_id: int, by: User | None = None) -> Experiment:
    """Start assigning new jobs; refused while another running experiment covers its kinds."""
    # One start at a time (every experiment row locked; they are few): the check for an
    # overlapping running experiment must see a concurrent start.
    list(Experiment.objects.select_for_update().only("pk"))
    experiment = Experiment.objects.select_for_update().get(pk=experiment_id)
    if experiment.status != ExperimentStatus.DRAFT:
        raise GenerationError(f"only a draft experiment can start; this one is {experiment.status}")
    variants = list(experiment.variants.all())
    if len(variants) < 2:
        raise GenerationError("an experiment needs at least two variants")
    problems = [
        p
        for v in variants
        for p in variant_problems(
            task_kind=experiment.task_kind,
            variant=VariantSpec(v.name, v.prompt_version, v.model, v.weight),
        )
    ]
    if problems:
        raise GenerationError("; ".join(problems))
    overlap = Experiment.objects.filter(status=ExperimentStatus.RUNNING).exclude(pk=experiment.pk)
    if experiment.task_kind:
        overlap = overlap.filter(Q(task_kind=experiment.task_kind) | Q(task_kind=""))
    if clash := overlap.first():
        raise GenerationError(f"experiment {clash.name} already covers {clash.scope}")
    experiment.status, experiment.started_at = ExperimentStatus.RUNNING, timezone.now()
    experiment.save(update_fields=["status", "started_at"])
    _log("experiment.started", f"experiment {experiment.name} started", by, experiment)
    return experiment


@transaction.atomic
def experiment_stop(*, experiment_id: int, by: User | None = None) -> Experiment:
    """Stop assigning new jobs (tasks already planned keep their variant)."""
    experiment = Experiment.objects.select_for_update().get(pk=experiment_id)
    if experiment.status != ExperimentStatus.RUNNING:
        raise GenerationError(f"the experiment is {experiment.status}, not running")
    experiment.status, experiment.stopped_at, experiment.stopped_by = (
        ExperimentStatus.STOPPED,
        timezone.now(),
        by,
    )
    experiment.save(update_fields=["status", "stopped_at", "stopped_by"])
    _log("experiment.stopped", f"experiment {experiment.name} stopped by {by}", by, experiment)
    return experiment


@transaction.atomic
def variant_promote(*, variant_id: int, by: User) -> Promotion:
    """Make the variant the default for the experiment's kinds from now on; stops the
    experiment if it still runs."""
    variant = ExperimentVariant.objects.select_related("experiment").get(pk=variant_id)
    experiment = Experiment.objects.select_for_update().get(pk=variant.experiment_id)
    if experiment.status == ExperimentStatus.DRAFT:
        raise GenerationError("a draft experiment has no results to promote from")
    if experiment.status == ExperimentStatus.RUNNING:
        experiment_stop(experiment_id=experiment.pk, by=by)
    promotion = Promotion.objects.create(
        variant=variant,
        task_kind=experiment.task_kind,
        prompt_version=variant.prompt_version,
        model=variant.model,
        promoted_by=by,
    )
    _log(
        "experiment.promoted",
        f"variant {variant} ({variant.label}) promoted to the default for "
        f"{experiment.scope} by {by}",
        by,
        experiment,
    )
    return promotion


def _log(event: str, message: str, by: User | None, experiment: Experiment) -> None:
    log_event(
        event,
        message,
        user=by,
        data={"experiment": experiment.name, "task_kind": experiment.task_kind},
    )
