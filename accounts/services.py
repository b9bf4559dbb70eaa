"""Writes for tenancy: keyword-only, typed, atomic where they must be."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models import Q
from django.utils.text import slugify

from accounts.models import BaseClass, Membership, Organisation, Role
from accounts.selectors import ORGANISATION_ADMINS_GROUP


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


# What an organisation administrator may do in the admin, always within their organisations
# (accounts/tenancy.py scopes every page): see their rows, manage classes and memberships,
# cancel, resume, retry and regenerate their jobs' work, review held content, acknowledge their
# alerts, and see their part of the dashboard. Never /metrics, policies, budgets' values or users.
ORGANISATION_ADMIN_PERMISSIONS: tuple[str, ...] = (
    "accounts.view_organisation",
    "accounts.view_baseclass",
    "accounts.add_baseclass",
    "accounts.change_baseclass",
    "accounts.view_membership",
    "accounts.add_membership",
    "accounts.change_membership",
    "accounts.delete_membership",
    "auth.view_user",
    "generation.view_coursegenerationjob",
    "generation.change_coursegenerationjob",
    "generation.view_generationtask",
    "generation.change_generationtask",
    "generation.view_generationattempt",
    "generation.view_courseevaluation",
    "generation.view_regenerationrequest",
    "generation.view_queueentry",
    "generation.view_heldcontent",
    "generation.review_heldcontent",
    "generation.view_judgerun",
    "generation.view_cacheentry",
    "generation.view_cachefalsehit",
    "monitoring.view_coursegenerationlog",
    "monitoring.view_alert",
    "monitoring.change_alert",
    "monitoring.view_dashboard",
    "ratelimits.view_ratelimitusage",
    "ratelimits.view_ratelimitviolation",
    "ratelimits.view_organisationbudget",
)


def organisation_admins_group_sync() -> Group:
    """Create the "Organisation administrators" group with its permissions (after migrate, and
    in tests); permissions staff added to it are kept. The permissions themselves must exist
    (migrate makes them: accounts.apps)."""
    group, _ = Group.objects.get_or_create(name=ORGANISATION_ADMINS_GROUP)
    wanted = Q(pk__in=[])
    for name in ORGANISATION_ADMIN_PERMISSIONS:
        app_label, codename = name.split(".")
        wanted |= Q(content_type__app_label=app_label, codename=codename)
    group.permissions.add(*Permission.objects.filter(wanted))
    return group


@transaction.atomic
def organisation_admin_make(*, user: User, organisation: Organisation) -> User:
    """Make `user` an administrator of `organisation` in the admin: staff, the admin role there,
    and the group that scopes them to their organisations."""
    membership_set(user=user, organisation=organisation, role=Role.ADMIN)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.groups.add(organisation_admins_group_sync())
    return user
