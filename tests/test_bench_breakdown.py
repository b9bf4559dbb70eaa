"""perf/breakdown.py: where a loaded course's wall goes beyond its critical path, from its rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from perf.breakdown import (
    STEPS,
    JobSpan,
    Occupancy,
    TaskSpan,
    critical_path_s,
    occupancy,
    wall_breakdown,
)

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def course(job: str, offset: float = 0.0) -> tuple[JobSpan, list[TaskSpan]]:
    """Created at 0; outline taken at 1, its calls 2 s, done at 3.5; chord tasks taken at 5 and 6,
    their calls 4 s and 8 s, done at 9.5 and 14.5; the job finished at 15."""
    tasks = [
        TaskSpan(job, True, at(offset + 1), at(offset + 3.5), 2.0),
        TaskSpan(job, False, at(offset + 5), at(offset + 9.5), 4.0),
        TaskSpan(job, False, at(offset + 6), at(offset + 14.5), 8.0),
    ]
    return JobSpan(job, at(offset), at(offset + 15)), tasks


def test_each_step_of_the_wall() -> None:
    job, tasks = course("a")
    steps = wall_breakdown([job], tasks)
    assert steps == {
        "to_outline_s": 1.0,
        "outline_over_calls_s": 0.5,  # 2.5 s run, 2 s of calls
        "to_chord_s": 1.5,  # outline done at 3.5, first chord task taken at 5
        "chord_rest_s": 1.5,  # 9.5 s from the first start to the last end, 8 s of calls
        "finalize_s": 0.5,
        "jobs": 1.0,
    }
    # The steps and the critical path (2 + 8 s) add up to the wall (15 s).
    assert critical_path_s(tasks) == 10.0
    assert sum(steps[name] for name in STEPS) + critical_path_s(tasks) == pytest.approx(15.0)


def test_means_over_jobs_and_jobs_that_did_not_run_are_left_out() -> None:
    a, a_tasks = course("a")
    b, b_tasks = course("b", offset=100)
    b_tasks[1] = TaskSpan("b", False, at(107), at(111.5), 4.0)  # taken 2 s later than in a
    unrun = JobSpan("c", at(0), at(1))
    c_tasks = [TaskSpan("c", True, at(0.5), at(1), 0.4), TaskSpan("c", False, None, None, 0.0)]
    steps = wall_breakdown([a, b, unrun], [*a_tasks, *b_tasks, *c_tasks])
    assert steps["jobs"] == 2.0
    assert steps["to_chord_s"] == pytest.approx((1.5 + 2.5) / 2)  # b's chord starts at 6, a's at 5
    assert wall_breakdown([unrun], c_tasks) == {}


def test_occupancy_counts_overlaps_only() -> None:
    spans = [
        TaskSpan(None, False, at(0), at(10), 0.0),
        TaskSpan(None, False, at(2), at(5), 0.0),
        TaskSpan(None, False, at(5), at(6), 0.0),  # starts as the second ends: not with it
        TaskSpan(None, False, None, None, 0.0),  # never ran
    ]
    two = occupancy(spans, slots=2)
    assert two.peak == 2
    assert two.mean == pytest.approx((10 + 3 + 1) / 10)  # task-seconds over the 10 s span
    assert two.full_share == pytest.approx(0.4)  # two running from 2 to 6
    three = occupancy([*spans, TaskSpan(None, False, at(4), at(4.5), 0.0)], slots=3)
    assert three.peak == 3
    assert three.full_share == pytest.approx(0.05)
    assert occupancy([], slots=1) == Occupancy(0, 0.0, 0.0)
