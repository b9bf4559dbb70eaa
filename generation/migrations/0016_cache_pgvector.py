"""The pgvector path of the content cache's similarity layer (docs/cache.md#search-at-scale).

Where the PostgreSQL server has the pgvector extension available (and the role may create it),
this creates `course_generation_cache_vectors` (an entry's id and its embedding as `vector`,
deleted with the entry by triggers), one
HNSW index (cosine) per known embedding size, statistics on the correlated exact filters (so the
planner knows when there are enough candidates for the index), and copies the float32 `embedding` bytes of the
existing entries into it. Elsewhere (SQLite, Debian's PostgreSQL without pgvector, a role
without the right) it does nothing to the database, and the similarity layer scores candidates
in numpy.

Django's state has the model (CacheVector, unmanaged) on every database, so the ORM can query
the table where it exists; generation/cache/vectors.py looks once per process whether it does.

The SQL is written out here, not imported, so that the migration stays what it was when it ran.
After installing pgvector on a database migrated without it: `manage.py migrate generation 0015`
then `manage.py migrate`.
"""

import logging

import django.db.models.deletion
import numpy as np
import pgvector.django.vector
from django.db import DatabaseError, migrations, models, transaction
from pgvector import Vector

logger = logging.getLogger("coursegen.generation")

TABLE = "course_generation_cache_vectors"
# all-MiniLM-L6-v2 (the embedded default) and text-embedding-3-small. An HNSW index needs one
# size, so each is a partial index on an expression of that size; vectors of other sizes are
# still searched by pgvector, without an index.
INDEXED_DIMENSIONS = (384, 1536)
BACKFILL_BATCH = 1000


def _available(cursor):
    cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    return cursor.fetchone() is not None


def _unpacked(rows):
    return [(pk, np.frombuffer(bytes(e), dtype=np.float32)) for pk, e in rows]


def _backfill(cursor):
    last = 0
    while True:
        cursor.execute(
            "SELECT id, embedding FROM course_generation_cache"
            " WHERE id > %s AND embedding IS NOT NULL ORDER BY id LIMIT %s",
            [last, BACKFILL_BATCH],
        )
        rows = cursor.fetchall()
        if not rows:
            return
        cursor.executemany(
            f"INSERT INTO {TABLE} (entry_id, dims, embedding) VALUES (%s, %s, %s::vector)"
            " ON CONFLICT (entry_id) DO NOTHING",
            [(pk, len(v), Vector(v).to_text()) for pk, v in _unpacked(rows)],
        )
        last = rows[-1][0]


GONE_SQL = f"""
CREATE OR REPLACE FUNCTION {TABLE}_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {TABLE} v USING gone WHERE v.entry_id = gone.id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION {TABLE}_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE {TABLE};
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS cache_vectors_deleted ON course_generation_cache;
CREATE TRIGGER cache_vectors_deleted AFTER DELETE ON course_generation_cache
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_deleted();
DROP TRIGGER IF EXISTS cache_vectors_truncated ON course_generation_cache;
CREATE TRIGGER cache_vectors_truncated AFTER TRUNCATE ON course_generation_cache
    FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_truncated();
"""


def forward(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if not _available(cursor):
            logger.info("pgvector is not available: the cache's similarity layer uses numpy")
            return
        try:
            # A savepoint: a role that may not create the extension leaves the migration whole.
            with transaction.atomic(using=connection.alias):
                cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except DatabaseError as error:
            logger.warning("pgvector not installed (%s): the similarity layer uses numpy", error)
            return
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            " entry_id bigint PRIMARY KEY,"
            " dims smallint NOT NULL CHECK (dims > 0),"
            " embedding vector NOT NULL CHECK (vector_dims(embedding) = dims))"
        )
        for dims in INDEXED_DIMENSIONS:
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS cache_vectors_hnsw_{dims} ON {TABLE}"
                f" USING hnsw ((embedding::vector({dims})) vector_cosine_ops)"
                f" WHERE dims = {dims}"
            )
        # An entry's vector goes with it. Triggers, not a foreign key: Django's flush (tests)
        # truncates the managed tables only, and a foreign key from this one would refuse that.
        cursor.execute(GONE_SQL)
        # The exact filters are correlated (a shape implies its kind, prompt, schema, level ...):
        # without this the planner multiplies their selectivities, expects a handful of
        # candidates where there are thousands, and sorts them all instead of using the index.
        cursor.execute(
            "CREATE STATISTICS IF NOT EXISTS cache_exact_fields_deps (dependencies) ON shape_hash,"
            " organisation_id, kind, prompt_version, schema_hash, model, level, audience_band"
            " FROM course_generation_cache"
        )
        _backfill(cursor)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        # The extension stays: other tables may use it.
        cursor.execute("DROP TRIGGER IF EXISTS cache_vectors_deleted ON course_generation_cache")
        cursor.execute("DROP TRIGGER IF EXISTS cache_vectors_truncated ON course_generation_cache")
        cursor.execute(f"DROP FUNCTION IF EXISTS {TABLE}_deleted(), {TABLE}_truncated()")
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute("DROP STATISTICS IF EXISTS cache_exact_fields_deps")


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0015_batch_repairs'),
    ]

    operations = [
        migrations.CreateModel(
            name='CacheVector',
            fields=[
                ('entry', models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, primary_key=True, related_name='vector', serialize=False, to='generation.cacheentry')),
                ('dims', models.PositiveSmallIntegerField(help_text="The embedding's size: each size has its own partial HNSW index.")),
                ('embedding', pgvector.django.vector.VectorField()),
            ],
            options={
                'db_table': 'course_generation_cache_vectors',
                'managed': False,
            },
        ),
        migrations.RunPython(forward, backward, elidable=False),
    ]
