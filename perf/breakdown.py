"""Where a course's wall time goes beyond its critical path, read from the rows it left.

A course's critical path is its outline's provider calls, then its slowest chord task's. Under
load the wall is longer; the rows' timestamps say by how much at each step: waiting for the
outline's message to be taken, the outline's own work around its calls, waiting for the chord's
first message to be taken, the rest of the chord's span beyond its slowest task's calls (its later
messages waiting, the tasks' own work), and the finalize. The steps add up to the wall less the
critical path. `make bench`
prints the means for the throughput phase, and the most tasks that ran at once (against the
workers' slots), so the next change can aim at the step that grew.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TaskSpan:
    job_id: Any
    outline: bool
    started: datetime | None
    finished: datetime | None
    calls_s: float  # the provider's latency over the task's attempts


@dataclass(frozen=True)
class JobSpan:
    job_id: Any
    created: datetime
    finished: datetime


STEPS = ("to_outline_s", "outline_over_calls_s", "to_chord_s", "chord_rest_s", "finalize_s")


def critical_path_s(spans: list[TaskSpan]) -> float:
    """A course's critical path from its tasks: its outline's calls, then its slowest chord
    task's (0 for what did not call)."""
    outline = sum(t.calls_s for t in spans if t.outline)
    return outline + max((t.calls_s for t in spans if not t.outline), default=0.0)


def _s(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def wall_breakdown(jobs: Iterable[JobSpan], tasks: Iterable[TaskSpan]) -> dict[str, float]:
    """Mean seconds of each step (STEPS) over the jobs whose outline and chord tasks all ran,
    with `jobs` counted as "jobs"; empty steps when none did."""
    by_job: dict[Any, list[TaskSpan]] = {}
    for task in tasks:
        by_job.setdefault(task.job_id, []).append(task)
    steps: dict[str, list[float]] = {name: [] for name in STEPS}
    for job in jobs:
        spans = by_job.get(job.job_id, [])
        outlines = [t for t in spans if t.outline]
        chord = [t for t in spans if not t.outline]
        ran = all(t.started and t.finished for t in spans)
        if len(outlines) != 1 or not chord or not ran:
            continue
        (outline,) = outlines
        assert outline.started and outline.finished  # ran
        starts = [t.started for t in chord if t.started]
        ends = [t.finished for t in chord if t.finished]
        steps["to_outline_s"].append(_s(outline.started, job.created))
        steps["outline_over_calls_s"].append(
            _s(outline.finished, outline.started) - outline.calls_s
        )
        steps["to_chord_s"].append(_s(min(starts), outline.finished))
        steps["chord_rest_s"].append(_s(max(ends), min(starts)) - max(t.calls_s for t in chord))
        steps["finalize_s"].append(_s(job.finished, max(ends)))
    out = {name: statistics.fmean(values) for name, values in steps.items() if values}
    if out:
        out["jobs"] = float(len(steps["to_outline_s"]))
    return out


@dataclass(frozen=True)
class Occupancy:
    peak: int  # the most tasks that ran at the same moment
    mean: float  # tasks running, averaged over the span from the first start to the last end
    full_share: float  # share of that span with every slot taken


def occupancy(tasks: Iterable[TaskSpan], slots: int) -> Occupancy:
    """How many tasks ran at once, against `slots`: whether tasks waited for a thread. A task that
    ends as another starts is not counted with it."""
    events: list[tuple[datetime, int]] = []
    for task in tasks:
        if task.started and task.finished:
            events += [(task.started, 1), (task.finished, -1)]
    if not events:
        return Occupancy(0, 0.0, 0.0)
    events.sort()  # at one instant the ends (-1) come first
    running = peak = 0
    area = full = 0.0
    for (at, change), (following, _) in zip(events, [*events[1:], events[-1]], strict=True):
        running += change
        peak = max(peak, running)
        span = (following - at).total_seconds()
        area += running * span
        full += span if running >= slots else 0.0
    whole = (events[-1][0] - events[0][0]).total_seconds()
    if whole <= 0:
        return Occupancy(peak, float(peak), 1.0 if peak >= slots else 0.0)
    return Occupancy(peak, area / whole, full / whole)
