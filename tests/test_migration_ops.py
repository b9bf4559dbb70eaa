"""AddIndexOnline: CREATE INDEX CONCURRENTLY on PostgreSQL (writes go on), plain elsewhere."""

from __future__ import annotations

import pytest
from django.db import connection, models
from django.db.migrations.loader import MigrationLoader

from coursegen.migration_ops import AddIndexOnline


def _sql(forwards: bool) -> str:
    operation = AddIndexOnline(
        model_name="coursegenerationjob",
        index=models.Index(fields=["updated_at"], name="job_probe_updated"),
    )
    before = MigrationLoader(connection).project_state()
    after = before.clone()
    operation.state_forwards("generation", after)
    # collect_sql: the statements are gathered, not run, so the test database stays as it is.
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        if forwards:
            operation.database_forwards("generation", editor, before, after)
        else:
            operation.database_backwards("generation", editor, after, before)
    return "\n".join(editor.collected_sql)


@pytest.mark.django_db(transaction=True)
def test_the_index_is_built_and_dropped_concurrently_on_postgresql_only() -> None:
    built, dropped = _sql(forwards=True), _sql(forwards=False)
    assert "job_probe_updated" in built and "job_probe_updated" in dropped
    online = connection.vendor == "postgresql"
    assert ("CREATE INDEX CONCURRENTLY" in built) is online, built
    assert ("DROP INDEX CONCURRENTLY" in dropped) is online, dropped
