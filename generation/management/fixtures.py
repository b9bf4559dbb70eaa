"""The organisation, class and teachers that the in-process simulation commands (quality_run,
experiment_sim) make their courses for: found or created, so a command can run again."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from accounts.models import BaseClass, Membership, Organisation, Role


def simulation_class(*, slug: str, name: str) -> BaseClass:
    org, _ = Organisation.objects.get_or_create(slug=slug, defaults={"name": name})
    base_class, _ = BaseClass.objects.get_or_create(
        organisation=org, name=name, defaults={"subject": "Mixed"}
    )
    return base_class


def teacher_of(*, base_class: BaseClass, username: str) -> Any:
    """A teacher of the class's organisation. Commands use one per course: they measure
    generation, not the per-user rate limits."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    Membership.objects.get_or_create(
        user=user, organisation_id=base_class.organisation_id, defaults={"role": Role.TEACHER}
    )
    return user
