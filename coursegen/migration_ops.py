"""Migration operations that keep a busy PostgreSQL table writable while they run."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class AddIndexOnline(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL: a plain CREATE INDEX blocks every write to the
    table while it reads the whole of it, and workers claim and record tasks all the time. Other
    databases (SQLite, the embedded demo) add the index as AddIndex does. The migration must
    not be atomic (`atomic = False`), as PostgreSQL requires of CONCURRENTLY."""

    @staticmethod
    def _as(schema_editor: Any) -> type[migrations.AddIndex]:
        online = schema_editor.connection.vendor == "postgresql"
        return AddIndexConcurrently if online else migrations.AddIndex

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._as(schema_editor).database_forwards(
            self, app_label, schema_editor, from_state, to_state
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._as(schema_editor).database_backwards(
            self, app_label, schema_editor, from_state, to_state
        )
