"""Empty the test database after a transactional test with DELETE, not Django's flush.

Django's `TransactionTestCase` empties the database after each test with `manage.py flush`: one
TRUNCATE of every table (PostgreSQL makes new files for each table, index and TOAST table), then
the post_migrate signal, which makes the content types, the permissions and the organisation
administrators' group again. On a 2-core machine that is ~0.3 s a test, and the suite has
~450 transactional tests. Deleting the rows of a few small tables in one transaction takes
~15 ms; the content types and permissions are kept (post_migrate would make the same rows again)
and the group is made again as post_migrate makes it. tests/test_dbflush.py checks that the
database ends in the same state as after Django's flush.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from django.db import connections, transaction
from django.test import TransactionTestCase

from accounts.services import organisation_admins_group_sync

# What post_migrate makes again after a flush, the same rows each time (as long as no test adds
# a model): keeping them spares making them again.
KEPT_TABLES = frozenset({"django_content_type", "auth_permission"})


def rows_delete(*, using: str) -> None:
    """Delete every row of every model's table in database `using`, except KEPT_TABLES, then
    make what post_migrate makes beyond them."""
    connection = connections[using]
    tables = [
        table
        for table in connection.introspection.django_table_names(
            only_existing=True, include_views=False
        )
        if table not in KEPT_TABLES
    ]
    quote = connection.ops.quote_name
    # Django creates PostgreSQL's foreign keys DEFERRABLE INITIALLY DEFERRED: they are checked
    # at COMMIT, when the referencing rows are gone as well, so the order does not matter.
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DELETE FROM {quote(table)}")
    organisation_admins_group_sync()


@contextmanager
def transactional_tests_delete_rows() -> Iterator[None]:
    """While in force, transactional tests on PostgreSQL end with rows_delete; anything else
    (SQLite, available_apps, serialized_rollback) keeps Django's flush."""
    # A private hook of Django's (django-stubs leave it out): the one that runs the flush.
    original: Callable[[TransactionTestCase], None] = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]

    def fixture_teardown(self: Any) -> None:
        aliases = self._databases_names(include_mirrors=False)
        if (
            self.available_apps is not None
            or self.serialized_rollback
            or any(connections[alias].vendor != "postgresql" for alias in aliases)
        ):
            original(self)
            return
        for alias in aliases:
            rows_delete(using=alias)

    with mock.patch.object(TransactionTestCase, "_fixture_teardown", fixture_teardown):
        yield
