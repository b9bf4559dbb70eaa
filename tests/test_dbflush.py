"""tests/dbflush: transactional tests end with the database as Django's own flush leaves it."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connection
from django.test import TransactionTestCase

from accounts.models import Role
from accounts.services import organisation_admin_make
from monitoring.logs import flush_all
from ratelimits.services import policies_seed
from tests.courses import finished_job
from tests.dbflush import rows_delete
from tests.factories import BaseClassFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _state() -> dict[str, Any]:
    existing = set(connection.introspection.table_names())  # pgvector's table may not be
    return {
        "rows": {
            model._meta.label: model._default_manager.count()
            for model in apps.get_models(include_auto_created=True)
            if model._meta.db_table in existing
        },
        "permissions": set(Permission.objects.values_list("content_type__app_label", "codename")),
        "groups": {
            group.name: set(group.permissions.values_list("codename", flat=True))
            for group in Group.objects.all()
        },
    }


def _a_world(make_member: Any, base_class: Any) -> None:
    """Rows in most apps' tables, joined by foreign keys: a finished course, an organisation
    administrator in the group, a group of the test's own."""
    teacher = make_member(Role.TEACHER, org=base_class.organisation)
    finished_job(teacher, base_class)
    admin = make_member(Role.ADMIN, org=base_class.organisation)
    organisation_admin_make(user=admin, organisation=base_class.organisation)
    Group.objects.create(name="A group of the test's own").permissions.add(
        Permission.objects.get(codename="view_alert")
    )
    flush_all()  # log rows are written in batches: all of them now


def test_rows_delete_leaves_what_djangos_flush_leaves(make_member: Any, base_class: Any) -> None:
    _a_world(make_member, base_class)
    call_command("flush", verbosity=0, interactive=False, database=DEFAULT_DB_ALIAS)
    after_flush = _state()

    policies_seed()  # as the tests' fixture does after a flush
    _a_world(make_member, BaseClassFactory.create())
    assert _state()["rows"] != after_flush["rows"]
    rows_delete(using=DEFAULT_DB_ALIAS)

    after_delete = _state()
    rows = after_delete.pop("rows")
    differ = {
        label: (after_flush["rows"][label], count)
        for label, count in rows.items()
        if count != after_flush["rows"][label]
    }
    assert differ == {}, "rows left: (after flush, after rows_delete)"
    assert after_delete == {k: v for k, v in after_flush.items() if k != "rows"}
    assert after_flush["groups"], "post_migrate's organisation administrators group"
    assert after_flush["permissions"], "the permissions kept"


def test_transactional_tests_end_with_rows_delete() -> None:
    # The session fixture (tests/conftest.py) has put it in place of Django's flush.
    teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]
    assert teardown.__module__ == "tests.dbflush"
    assert connection.vendor == "postgresql"
