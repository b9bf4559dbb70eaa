"""perf/procs.py: a process the bench starts with `nice` gets it where the scheduler counts it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from perf import procs


def test_nice_reaches_the_session_of_the_process(tmp_path: Path) -> None:
    """Each process the bench starts has a session of its own; with autogroup scheduling the
    session's nice value, not the process's, decides its CPU share against the others."""
    fleet = procs.Fleet(dict(os.environ), tmp_path)
    proc = fleet.start("sleeper", ["sleep", "30"], nice=7)
    try:
        assert os.getsid(proc.pid) == proc.pid  # a session of its own
        # `nice -n` too (what counts without autogroups), once nice(1) has run.
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
        deadline = time.monotonic() + 5
        while os.getpriority(os.PRIO_PROCESS, proc.pid) != expected:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        autogroup = Path(f"/proc/{proc.pid}/autogroup")
        if not autogroup.exists():
            pytest.skip("this kernel has no autogroups")
        assert autogroup.read_text().split()[-1] == "7"
    finally:
        fleet.stop()
