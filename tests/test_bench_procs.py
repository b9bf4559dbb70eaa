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


def test_it_counts_the_run_queue_wait_of_a_process_that_competes_for_the_cpu(
    tmp_path: Path,
) -> None:
    """`cpu_wait` is the time a process was runnable but not running: three CPU-bound
    processes pinned to one CPU must wait for it about two thirds of the time."""
    if not Path("/proc/self/schedstat").exists():
        pytest.skip("this kernel keeps no schedstats")
    fleet = procs.Fleet(dict(os.environ), tmp_path)
    spin = ["taskset", "-c", "0", "python3", "-c", "while True: pass"]
    spinners = [fleet.start(f"spin{n}", spin) for n in range(3)]
    try:
        time.sleep(1.5)
        waited = sum(p.cpu_wait() for p in spinners)
        ran = sum(p.cpu() for p in spinners)
    finally:
        fleet.stop()

    assert waited > ran > 0.5  # one CPU for three: each waits while the other two run
    assert procs.cpu_wait_s(2**22 + 1) == 0.0  # no such process
