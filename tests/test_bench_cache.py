"""`manage.py bench_cache` (make bench-cache) on a small scale: it runs and its JSON last line has
the figures docs/cache.md#benchmark reports. No timing is asserted here."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db(transaction=True)


def test_bench_cache_prints_its_figures_as_a_json_last_line() -> None:
    out = StringIO()
    call_command("bench_cache", "--entries", "400", "--courses", "20", stdout=out)
    figures = json.loads(out.getvalue().splitlines()[-1])

    expected = {
        "entries", "lookup_p50_ms", "lookup_p95_ms", "repeat_share", "cost_per_course_without",
        "cost_per_course_with", "false_hits",
    }  # fmt: skip
    assert expected <= set(figures)
    assert figures["entries"] >= 400 and figures["repeat_share"] == 0.3
    assert figures["false_hits"] == 0
    assert figures["cost_per_course_with"] < figures["cost_per_course_without"]
