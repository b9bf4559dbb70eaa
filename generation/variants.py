"""Which model and prompt version a job's tasks use: the built-in defaults, changed by promoted
A/B variants from then on, and, for the kinds a running experiment covers, the variant the job
is assigned to.

Assignment is deterministic by job id (a hash of the experiment's name and the job id, split by
the variants' weights), so a repeated planning step, a resumed job or a report all see the same
variant. Read by the planning step (generation/services/planning.py); written by the experiment
services (generation/quality/experiments.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from uuid import UUID

from generation.models import Experiment, ExperimentStatus, ExperimentVariant, Promotion
from generation.schemas import TaskKind


@dataclass(frozen=True)
class Choice:
    model: str
    prompt_version: str
    variant_id: int | None = None


def assign(
    experiment: Experiment, variants: list[ExperimentVariant], job_id: UUID
) -> ExperimentVariant:
    """The variant `job_id` falls in: the same one every time, in proportion to the weights."""
    digest = hashlib.sha256(f"{experiment.name}:{job_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % sum(v.weight for v in variants)
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    raise AssertionError("unreachable: the point lies within the total weight")


def defaults_promoted(defaults: Mapping[TaskKind, Choice]) -> dict[TaskKind, Choice]:
    """The defaults with every promotion applied, oldest first (the latest one wins)."""
    choices = dict(defaults)
    for promotion in Promotion.objects.order_by("promoted_at", "pk"):
        for kind in _kinds(promotion.task_kind):
            choices[kind] = replace(
                choices[kind],
                model=promotion.model or choices[kind].model,
                prompt_version=promotion.prompt_version or choices[kind].prompt_version,
            )
    return choices


def choices_for_job(*, job_id: UUID, defaults: Mapping[TaskKind, Choice]) -> dict[TaskKind, Choice]:
    """What each task kind of this job uses: promoted defaults, then its experiment variants."""
    choices = defaults_promoted(defaults)
    running = Experiment.objects.filter(status=ExperimentStatus.RUNNING).prefetch_related(
        "variants"
    )
    for experiment in running:
        variants = sorted(experiment.variants.all(), key=lambda v: v.pk)
        if len(variants) < 2:
            continue
        variant = assign(experiment, variants, job_id)
        for kind in _kinds(experiment.task_kind):
            choices[kind] = Choice(
                model=variant.model or choices[kind].model,
                prompt_version=variant.prompt_version or choices[kind].prompt_version,
                variant_id=variant.pk,
            )
    return choices


def _kinds(task_kind: str) -> list[TaskKind]:
    return [TaskKind(task_kind)] if task_kind else list(TaskKind)
