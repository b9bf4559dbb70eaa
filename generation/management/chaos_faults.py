"""`make chaos`'s faults aimed at one step: a worker killed in the middle of a regeneration or a
finalize, and a storm of cancels and priority changes while the dispatcher runs.

A kill at a random moment rarely lands inside a step that lasts a few milliseconds. To land
there every time, the run holds a lock the step needs next, from its own connection, sees in
the database that the step has begun (its lease is held, by a worker whose pid it knows), kills
that worker and only then lets the lock go:

* before a regeneration records its version: the task's row (`FOR KEY SHARE`; the claim and
  the provider call pass, `_regeneration_record`'s `FOR UPDATE` waits);
* after it recorded its version, before the course is re-assembled, and inside a finalize that
  holds the job's finalize lease: the evaluations table (`SHARE`; both score the course, an
  insert there, just before they commit).

What a kill interrupts is read before and after it from the leases (`regenerate:`/`finalize:`
worker names carry the pid), so the figures count steps that were really in progress.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Now

from generation import services
from generation.models import (
    CourseEvaluation,
    CourseGenerationJob,
    GenerationTask,
    JobStatus,
    Priority,
    RegenerationRequest,
    RegenerationSource,
    RegenerationStatus,
    TaskStatus,
)
from generation.regeneration import regeneration_request_create, regeneration_send
from generation.schemas import TaskKind
from ratelimits.services import RateLimitExceeded, RequestTooLarge

logger = logging.getLogger("coursegen.chaos")


class Workers(Protocol):
    """What the faults need of the run's processes (chaos.Stack)."""

    workers: dict[str, Any]

    def kill_worker(self, name: str) -> None: ...

    def start_worker(self, name: str) -> None: ...


def _pid_of(worker: str) -> int | None:
    """`finalize:host:pid:thread` (services.worker_name, with the step's prefix) -> pid."""
    parts = worker.split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


@dataclass
class Kills:
    """kill -9 of a worker, counting the regenerations and finalizes it interrupted."""

    stack: Workers
    kills: int = 0
    regenerations: int = 0
    finalizes: int = 0
    regeneration_ids: set[int] = field(default_factory=set)

    def _in_progress(self, pid: int) -> tuple[set[tuple[int, int]], set[tuple[UUID, int]]]:
        requests = {
            (pk, runs)
            for pk, runs, worker in RegenerationRequest.objects.filter(
                status=RegenerationStatus.RUNNING, lease_expires_at__gt=Now()
            ).values_list("pk", "runs", "worker")
            if _pid_of(worker) == pid
        }
        finalizes = {
            (pk, runs)
            for pk, runs, worker in CourseGenerationJob.objects.filter(
                status=JobStatus.RUNNING, finalize_lease_expires_at__gt=Now()
            ).values_list("pk", "finalize_runs", "finalize_worker")
            if _pid_of(worker) == pid
        }
        return requests, finalizes

    def kill(self, name: str, *, restart: bool = True) -> None:
        pid = self.stack.workers[name].pid
        before = _tolerant(lambda: self._in_progress(pid), (set(), set()))
        self.stack.kill_worker(name)
        self.kills += 1
        # Still in progress once the worker is dead: it did not finish before the kill.
        after = _tolerant(lambda: self._in_progress(pid), (set(), set()))
        killed_requests = before[0] & after[0]
        self.regenerations += len(killed_requests)
        self.regeneration_ids |= {pk for pk, _ in killed_requests}
        self.finalizes += len(before[1] & after[1])
        if restart:
            self.stack.start_worker(name)

    def kill_holders(self, pids: set[int]) -> list[str]:
        """Kill every worker whose pid is in `pids` (without restarting it)."""
        victims = [n for n, p in self.stack.workers.items() if p.pid in pids]
        for name in victims:
            self.kill(name, restart=False)
        return victims


def _tolerant(read: Callable[[], Any], fallback: Any) -> Any:
    try:
        return read()
    except DatabaseError:
        connection.close()
        return fallback


class HeldLock(threading.Thread):
    """Holds a lock in a transaction of its own connection until `release()`."""

    def __init__(self, sql: str, params: Sequence[Any] = ()) -> None:
        super().__init__(daemon=True)
        self.sql, self.params = sql, list(params)
        self.held, self.released = threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self.sql, self.params)
                self.held.set()
                self.released.wait(600)  # never for ever, whatever happens to the run
        finally:
            self.held.set()
            connection.close()

    def __enter__(self) -> HeldLock:
        self.start()
        self.held.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.join(30)


EVALUATIONS_LOCK = f"LOCK TABLE {CourseEvaluation._meta.db_table} IN SHARE MODE"
TASKS_KEY_SHARE = (
    f"SELECT 1 FROM {GenerationTask._meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE"
)


def _wait_settled(
    read: Callable[[], set[Any]], *, wanted: int, timeout: float, settle_s: float = 3.0
) -> set[Any]:
    """Poll `read` until it returns `wanted` items, or has returned some and grown no more for
    `settle_s`, or `timeout` passed; what it read last."""
    deadline, seen, changed = time.monotonic() + timeout, set[Any](), time.monotonic()
    while time.monotonic() < deadline:
        now_seen = _tolerant(read, seen)
        if now_seen != seen:
            seen, changed = now_seen, time.monotonic()
        if len(seen) >= wanted or (seen and time.monotonic() - changed > settle_s):
            break
        time.sleep(0.05)
    return seen


# --- a worker killed during finalize ------------------------------------------------------------
def kill_during_finalize(kills: Kills, jobs: list[UUID], *, timeout: float) -> int:
    """While the evaluations table is locked, every finalize of the batch stops just before it
    scores its course (holding its finalize lease); kill the workers holding one. Returns the
    number of finalizes interrupted."""
    before = kills.finalizes

    def finalizing() -> set[int]:
        return {
            pid
            for worker in CourseGenerationJob.objects.filter(
                pk__in=jobs, status=JobStatus.RUNNING, finalize_lease_expires_at__gt=Now()
            ).values_list("finalize_worker", flat=True)
            if (pid := _pid_of(worker)) is not None
        }

    with HeldLock(EVALUATIONS_LOCK):
        pids = _wait_settled(finalizing, wanted=len(kills.stack.workers), timeout=timeout)
        victims = kills.kill_holders(pids)
    for name in victims:
        kills.stack.start_worker(name)
    return kills.finalizes - before


# --- a worker killed during a regeneration --------------------------------------------------------
def _tasks_to_regenerate(jobs: list[UUID], kind: str) -> list[GenerationTask]:
    """One succeeded task of `kind` per finished course, with no regeneration open."""
    open_requests = Q(
        regeneration_requests__status__in=[RegenerationStatus.PENDING, RegenerationStatus.RUNNING]
    )
    chosen: dict[UUID, GenerationTask] = {}
    for task in (
        GenerationTask.objects.filter(
            job_id__in=jobs,
            job__status=JobStatus.SUCCEEDED,
            kind=kind,
            status=TaskStatus.SUCCEEDED,
        )
        .exclude(open_requests)
        .select_related("job__owner")
        .order_by("job_id", "position")
    ):
        chosen.setdefault(task.job_id, task)
    return list(chosen.values())


def regenerations_ask(jobs: list[UUID], kind: str) -> list[RegenerationRequest]:
    """Ask, as the course's owner through the API's service, for a new version of one task per
    course (not sent yet). A task another request (the judge's) holds is skipped."""
    requests = []
    for task in _tasks_to_regenerate(jobs, kind):
        try:
            requests.append(
                regeneration_request_create(
                    task_id=task.pk,
                    by=task.job.owner,
                    source=RegenerationSource.API,
                    instruction="chaos: a new version, please",
                    send=False,
                )
            )
        except (services.GenerationError, RateLimitExceeded, RequestTooLarge) as exc:
            logger.warning("chaos: no regeneration of task %s: %s", task.pk, exc)
    return requests


def kill_during_regenerations(
    kills: Kills, jobs: list[UUID], *, after_record: bool, timeout: float
) -> list[int]:
    """Regenerate one task per course and kill the workers running them: before they record the
    new version (the tasks' rows held), or after, before the course is re-assembled (the
    evaluations table held). Returns the requests' ids."""
    kind = TaskKind.ASSESSMENT if after_record else TaskKind.LESSON_SECTION
    requests = regenerations_ask(jobs, kind)
    ids = [r.pk for r in requests]
    if after_record:
        lock = HeldLock(EVALUATIONS_LOCK)
    else:
        lock = HeldLock(TASKS_KEY_SHARE, [[r.task_id for r in requests]])

    def in_progress() -> set[tuple[int, int]]:
        running = RegenerationRequest.objects.filter(
            pk__in=ids,
            status=RegenerationStatus.RUNNING,
            lease_expires_at__gt=Now(),
            version__isnull=not after_record,
        )
        return {
            (pk, pid)
            for pk, worker in running.values_list("pk", "worker")
            if (pid := _pid_of(worker)) is not None
        }

    with lock:
        for request in requests:
            regeneration_send(request_id=request.pk, priority=Priority.NORMAL)
        seen = _wait_settled(in_progress, wanted=len(ids), timeout=timeout)
        victims = kills.kill_holders({pid for _, pid in seen})
    for name in victims:
        kills.stack.start_worker(name)
    return ids


# --- a cancel storm while the dispatcher runs ----------------------------------------------------
@dataclass
class Storm:
    cancels: int = 0  # accepted: the job is cancelled
    cancels_refused: int = 0  # the job had already finished (a clear 4xx at the API)
    priority_changes: int = 0
    dispatches: int = 0  # dispatcher runs during the storm
    errors: int = 0  # anything else: a deadlock, a 500
    cancelled_ids: set[UUID] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def cancel_storm(
    storm: Storm, jobs: list[UUID], *, cancels: int, seed: int, threads: int = 8
) -> None:
    """At once, from `threads` connections: cancel `cancels` jobs (half of them queued, half
    running, as far as there are), change the priority of every other job twice, while two
    threads run the dispatcher (the queue's own `queue_dispatch`) over and over."""
    rng = random.Random(seed)
    status = dict(CourseGenerationJob.objects.filter(pk__in=jobs).values_list("pk", "status"))
    queued = [j for j in jobs if status[j] == JobStatus.QUEUED]
    running = [j for j in jobs if status[j] == JobStatus.RUNNING]
    rng.shuffle(queued)
    rng.shuffle(running)
    from_queue = min(len(queued), cancels // 2)
    targets = queued[:from_queue] + running[: cancels - from_queue]
    targets += queued[from_queue : from_queue + cancels - len(targets)]
    others = [j for j in jobs if j not in targets]
    ops: list[tuple[str, UUID, int]] = [("cancel", j, 0) for j in targets] + [
        ("priority", j, rng.choice(Priority.values)) for j in others * 2
    ]
    rng.shuffle(ops)
    done = threading.Event()
    start = threading.Barrier(threads + 2)

    def operate(mine: list[tuple[str, UUID, int]]) -> None:
        start.wait()
        try:
            for op, job_id, priority in mine:
                _storm_op(storm, op, job_id, priority)
        finally:
            connection.close()

    def dispatch() -> None:
        start.wait()
        try:
            while not done.is_set():
                try:
                    services.queue_dispatch()
                    storm.count("dispatches")
                except DatabaseError:
                    logger.exception("chaos: the dispatcher failed during the storm")
                    storm.count("errors")
                    connection.close()
        finally:
            connection.close()

    operators = [threading.Thread(target=operate, args=(ops[n::threads],)) for n in range(threads)]
    dispatchers = [threading.Thread(target=dispatch) for _ in range(2)]
    for thread in operators + dispatchers:
        thread.start()
    for thread in operators:
        thread.join()
    done.set()
    for thread in dispatchers:
        thread.join()


def _storm_op(storm: Storm, op: str, job_id: UUID, priority: int) -> None:
    try:
        if op == "cancel":
            services.job_cancel(job_id=job_id, reason="cancelled in the chaos storm")
            storm.count("cancels")
            with storm.lock:
                storm.cancelled_ids.add(job_id)
        else:
            services.job_set_priority(job_id=job_id, priority=priority)
            storm.count("priority_changes")
    except services.GenerationError:
        storm.count("cancels_refused")
    except Exception:
        logger.exception("chaos: %s of job %s failed", op, job_id)
        storm.count("errors")
        connection.close()


def cancelled_report(jobs: list[UUID], storm: Storm) -> dict[str, int]:
    """Cancelled jobs, honestly: each one the storm cancelled stays cancelled, frees its slot
    and leaves no task open (a task running at the cancel records its result and ends)."""
    cancelled = CourseGenerationJob.objects.filter(pk__in=jobs, status=JobStatus.CANCELLED)
    open_tasks = GenerationTask.objects.filter(
        job__in=cancelled, status__in=[TaskStatus.PENDING, TaskStatus.RUNNING]
    )
    return {
        "cancelled": cancelled.count(),
        "cancels_reverted": len(storm.cancelled_ids - set(cancelled.values_list("pk", flat=True))),
        "cancelled_open_tasks": open_tasks.count(),
        "cancelled_slots_held": cancelled.filter(
            queue_entry__state__in=["queued", "claimed"]
        ).count(),
    }
