"""Real processes for the benchmarks (redis-server, gunicorn, Celery workers and beat) and the
CPU and memory they use, read from /proc.

CPU is utime + stime (+ cutime + cstime, what the process reaped from its children) of every
process in a tree, in seconds. PostgreSQL is measured per backend: the pids that
pg_stat_activity shows for the benchmark's database, sampled while a phase runs (the server is
shared with other databases, so the server-wide sum is printed only for reference).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


# --- /proc -------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_s(pid: int, *, children: bool = True) -> float:
    """CPU seconds of one process (plus the children it has reaped)."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / TICK


def cpu_wait_s(pid: int) -> float:
    """Seconds the threads of one process have spent runnable but waiting for a CPU (the
    scheduler's run-queue delay, /proc/<pid>/task/*/schedstat's second field). A process
    that needs more CPU than it gets waits here; one waiting on I/O does not."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended, or a kernel without schedstats
    return total / 1e9


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None and int(f[1]) == pid:
                found.append(int(entry))
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children_of(current))
    return pids


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                pids.append(int(entry))
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- managed processes -------------------------------------------------------------------------
@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_rss: float = 0.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return sum(cpu_s(p) for p in tree(self.pid))

    def cpu_wait(self) -> float:
        return sum(cpu_wait_s(p) for p in tree(self.pid))

    def rss_peak(self) -> float:
        self.peak_rss = max([self.peak_rss, *(peak_rss_mb(p) for p in tree(self.pid))])
        return self.peak_rss

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is not None:
            return
        self.rss_peak()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Fleet:
    """The processes of one benchmark, started with a common environment."""

    env: dict[str, str]
    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        role: str,
        command: list[str],
        extra_env: dict[str, str] | None = None,
        *,
        nice: int = 0,
    ) -> Proc:
        """Start `command` in a session of its own; `nice` lowers its CPU weight (see
        `session_nice`)."""
        log = self.logdir / f"{role}-{len(self.procs)}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            ["nice", "-n", str(nice), *command] if nice else command,
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches us, not them
        )
        if nice:
            session_nice(popen.pid, nice)
        proc = Proc(role, popen, log)
        self.procs.append(proc)
        return proc

    def of(self, *roles: str) -> list[Proc]:
        return [p for p in self.procs if p.role in roles and p.popen.poll() is None]

    def stop(self, *roles: str) -> None:
        for proc in reversed(self.of(*roles) if roles else list(self.procs)):
            proc.stop()

    def cpu_by_role(self) -> dict[str, float]:
        return self._by_role(Proc.cpu)

    def cpu_wait_by_role(self) -> dict[str, float]:
        """Run-queue wait (`cpu_wait_s`) per role, over every thread of each process tree."""
        return self._by_role(Proc.cpu_wait)

    def _by_role(self, measure: Callable[[Proc], float]) -> dict[str, float]:
        totals: dict[str, float] = {}
        for proc in self.procs:
            if proc.popen.poll() is None:
                totals[proc.role] = totals.get(proc.role, 0.0) + measure(proc)
        return totals


def session_nice(pid: int, nice: int) -> bool:
    """Give the session (autogroup) of `pid` the nice value `nice`.

    With the kernel's autogroup scheduling on (/proc/sys/kernel/sched_autogroup_enabled, the
    default on desktop and many server kernels), CPU is shared first between sessions, equally
    whatever their processes' nice values: a process's nice only orders it within its session.
    Every process the bench starts has a session of its own, so `nice -n 10` alone did not lower
    a worker's share against the web or PostgreSQL at all; the autogroup's own nice value does.
    False when the kernel has no autogroups (then `nice -n` is what counts).
    """
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        return False
    return True


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_for(predicate: object, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.role} exited: {proc.log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


# --- PostgreSQL backends ------------------------------------------------------------------------
class BackendCpu:
    """CPU of this database's PostgreSQL backends, sampled in a thread while a phase runs."""

    def __init__(self, dsn: str, interval: float = 0.2):
        self.dsn, self.interval = dsn, interval
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._own = self._conn.info.backend_pid
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pids(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s",
            [self._own],
        ).fetchall()
        return [int(r[0]) for r in rows]

    def _sample(self) -> None:
        values = {pid: cpu_s(pid, children=False) for pid in self._pids()}
        with self._lock:
            for pid, value in values.items():
                if value:
                    self._last[pid] = max(value, self._last.get(pid, 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psycopg.Error):
                self._sample()

    def mark(self) -> None:
        """Start counting from now: backends alive now count from their current CPU."""
        self._sample()
        with self._lock:
            self._base = dict(self._last)
            self._last = dict(self._last)

    def total(self) -> float:
        self._sample()
        with self._lock:
            return sum(v - self._base.get(pid, 0.0) for pid, v in self._last.items())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._conn.close()


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent busy (not idle or waiting for I/O)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def server_cpu(names: Iterable[str] = ("postgres",)) -> float:
    return sum(cpu_s(pid, children=False) for name in names for pid in pids_named(name))
