"""Read-side helpers for tenancy. Roles always come from Membership rows."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import connection

from accounts.models import BaseClass, Membership, Role

# Every submit names its class: checked in one statement that needs no compiling (the ORM's join
# through organisations was most of the check's time). Standard SQL: SQLite runs it too.
_MEMBER_CLASS_SQL = """
SELECT c.* FROM base_classes c
JOIN memberships m ON m.organisation_id = c.organisation_id AND m.user_id = %s
WHERE c.id = %s
"""


def class_of_member_get(*, user: User | AnonymousUser, class_id: Any) -> BaseClass | None:
    """The class, if `user` is a member of its organisation (None otherwise)."""
    if not user.is_authenticated:
        return None
    pk = BaseClass._meta.pk.get_db_prep_value(class_id, connection)  # a UUID, or hex on SQLite
    return next(iter(BaseClass.objects.raw(_MEMBER_CLASS_SQL, [user.pk, pk])), None)


# --- Admin tenancy (docs/admin.md) ---------------------------------------------------------------
# Staff are platform operators unless they are in this group: then they are organisation
# administrators, who see and act on the organisations they hold the admin role in, and no other.
ORGANISATION_ADMINS_GROUP = "Organisation administrators"


def is_organisation_admin(user: Any) -> bool:
    """Whether `user` is staff scoped to their organisations (read once per user object)."""
    if not (getattr(user, "is_authenticated", False) and user.is_staff) or user.is_superuser:
        return False
    cached = getattr(user, "_coursegen_org_admin", None)
    if cached is None:
        cached = user.groups.filter(name=ORGANISATION_ADMINS_GROUP).exists()
        user._coursegen_org_admin = cached
    return bool(cached)


def administered_organisation_ids(user: Any) -> list[Any]:
    """The organisations `user` holds the admin role in, from Membership rows."""
    cached = getattr(user, "_coursegen_admin_orgs", None)
    if cached is None:
        cached = list(
            Membership.objects.filter(user=user, role=Role.ADMIN).values_list(
                "organisation_id", flat=True
            )
        )
        user._coursegen_admin_orgs = cached
    return list(cached)
