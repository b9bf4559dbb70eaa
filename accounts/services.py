"""Writes for tenancy: keyword-only, typed, atomic where they must be."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.text import slugify

from accounts.models import BaseClass, Membership, Organisation, Role


def organisation_create(*, name: str, slug: str | None = None) -> Organisation:
    return Organisation.objects.create(name=name, slug=slug or slugify(name))


def base_class_create(*, organisation: Organisation, name: str, subject: str = "") -> BaseClass:
    return BaseClass.objects.create(organisation=organisation, name=name, subject=subject)


@transaction.atomic
def membership_set(*, user: User, organisation: Organisation, role: Role) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        user=user, organisation=organisation, defaults={"role": role}
    )
    return membership


@transaction.atomic
def user_create_member(
    *, username: str, organisation: Organisation, role: Role, password: str | None = None
) -> User:
    user_model = get_user_model()
    user = user_model.objects.create_user(username=username, password=password)
    membership_set(user=user, organisation=organisation, role=role)
    return user
