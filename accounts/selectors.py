"""Read-side helpers for tenancy. Roles always come from Membership rows."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import connection

from accounts.models import BaseClass

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
