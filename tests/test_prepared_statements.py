"""PostgreSQL prepares the statements a connection runs again and again
(DATABASE_PREPARED_STATEMENTS, coursegen/settings.py): parameters are bound by the server and
psycopg prepares a statement after 5 runs, so the hot path is parsed and planned once per
connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"
)

_PROBE = """
import json
from django.conf import settings
print(json.dumps(settings.DATABASES["default"].get("OPTIONS", {})))
"""


def _options(**env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_PREPARED")}
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + _PROBE],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "coursegen.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    options: dict[str, object] = json.loads(run.stdout.splitlines()[-1])
    return options


@pytest.mark.django_db
def test_a_statement_run_again_is_prepared_on_the_server() -> None:
    sql = "SELECT count(*) FROM course_generation_jobs WHERE status = %s"
    with connection.cursor() as cursor:
        for _ in range(6):
            cursor.execute(sql, ["queued"])
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ["%FROM course_generation_jobs WHERE status = $1%"],
        )
        (prepared,) = cursor.fetchone()

    assert prepared == 1  # the server holds it, with a bound parameter ($1), not a literal


def test_it_can_be_turned_off_for_a_pooler_that_cannot_keep_prepared_statements() -> None:
    on = _options()
    off = _options(DATABASE_PREPARED_STATEMENTS="false")

    assert on.get("server_side_binding") is True and on.get("prepare_threshold") == 5
    assert "server_side_binding" not in off and "prepare_threshold" not in off
