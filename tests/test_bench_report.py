"""`make bench`'s report: the table, a line per target, and the JSON object as the last line.
The benchmark itself runs real processes for minutes and is not part of the suite."""

from __future__ import annotations

import json
from io import StringIO

import pytest

from perf import load
from perf.management.commands.bench import TARGETS, Command


def report(results: dict[str, float]) -> list[str]:
    command = Command(stdout=StringIO())
    parser = command.create_parser("manage.py", "bench")
    command.opts = vars(parser.parse_args([]))
    command.results = dict(results)
    command.rows = [("throughput", "courses per hour", "6319")]
    command.report()
    return command.stdout.getvalue().splitlines()


def test_targets_met_missed_and_not_measured() -> None:
    lines = report({"courses_per_hour": 5999, "submit_p99_ms": 50})
    assert "target courses_per_hour >= 6000: 5999 (NOT met)" in lines
    assert "target submit_p99_ms <= 50: 50 (met)" in lines
    # A phase left out with --phases is neither met nor missed.
    assert "target cpu_s_per_course <= 0.3: not measured in this run" in lines
    assert "target under_load_wall_over_critical_path <= 1.3: not measured in this run" in lines
    assert "target wall_over_critical_path <= 1.1: not measured in this run" in lines
    assert sum(line.startswith("target ") for line in lines) == len(TARGETS)


def test_last_line_is_the_json_with_the_settings() -> None:
    last = json.loads(report({"courses_per_hour": 6319})[-1])
    assert last["courses_per_hour"] == 6319
    assert last["settings"]["web"] == "gunicorn gevent 2x1000"  # processes x connections
    assert last["settings"]["pool"] == "threads"


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 51.0), (99, 99.0), (100, 100.0)])
def test_percentile_is_nearest_rank(q: float, expected: float) -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert load.percentile(values, q) == expected
