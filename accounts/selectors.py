"""Read-side helpers for tenancy. Roles always come from Membership rows."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from accounts.models import BaseClass, Membership, Organisation


def membership_get(*, user: User | AnonymousUser, organisation: Organisation) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, organisation=organisation).first()


def organisations_for(*, user: User | AnonymousUser) -> QuerySet[Organisation]:
    if not user.is_authenticated:
        return Organisation.objects.none()
    return Organisation.objects.filter(memberships__user=user)


def classes_for(*, user: User | AnonymousUser) -> QuerySet[BaseClass]:
    return BaseClass.objects.filter(organisation__in=organisations_for(user=user))
