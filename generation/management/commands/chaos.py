"""`make chaos`: fault injection against real worker processes, Redis and PostgreSQL.

It starts its own Redis server (so it can really restart it), two Celery workers (threads pool)
and celery beat (the reconciler), then runs batches of courses with the offline provider while it:
kills -9 a worker at 10 points of a batch and restarts it, then once more inside finalize and
twice inside regenerations (before and after the new version is recorded; chaos_faults.py makes
those kills land there every time); restarts Redis in the middle of a batch (every queued
message, chord counter and breaker state is lost); restarts its PostgreSQL cluster; runs a
five-minute provider outage (every call answers 503); storms a batch with cancels and priority
changes while the dispatcher runs; and delivers one task's message twice. The offline provider
logs every call it receives, so the figures come from what the provider saw
(chaos_report.py): `duplicate_provider_calls` counts calls for a task that had already
succeeded. A watcher thread samples the job watchdog's own query all along (`jobs_stuck`); the
logs are searched for deadlocks. The last line printed is one JSON object.

With a RabbitMQ broker (`make chaos-rabbitmq`: CELERY_BROKER_URL names the port of a RabbitMQ
node the run starts for itself, chaos_rabbitmq.py) the same batches run on it, Redis kept as
result backend and cache, plus one more batch with that node restarted mid-batch; the same
checks apply.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.models.functions import Now

from accounts.models import BaseClass, Role
from generation import services
from generation.management import chaos_faults as faults
from generation.management.chaos_postgres import ScratchPostgres
from generation.management.chaos_rabbitmq import ChaosRabbitMQ
from generation.management.chaos_report import (
    deadlocks_logged,
    ledger_mismatches,
    report,
    watchdog_failed,
)
from generation.models import (
    CourseGenerationJob,
    GenerationTask,
    JudgeStatus,
    RegenerationRequest,
    RegenerationStatus,
    TaskStatus,
)
from generation.schemas import CourseRequest
from generation.selectors import jobs_stuck

ROOT = Path(settings.BASE_DIR)


@dataclass
class Stack:
    """The processes under test: Redis, workers and beat."""

    workdir: Path
    redis_port: int
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _redis_ping(self.redis_port), 10, "redis did not start")

    def restart_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()  # no persistence: everything in it is gone, as after a crash
        self.redis.wait()
        self.start_redis()

    def start_worker(self, name: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.workers[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "coursegen",
                "worker",
                "-P",
                "threads",
                "-c",
                "16",
                "-n",
                f"{name}@%h",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_worker(self, name: str) -> None:
        self.workers[name].send_signal(signal.SIGKILL)
        self.workers[name].wait()

    def start_beat(self) -> None:
        log = (self.workdir / "beat.log").open("ab")
        self.others.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "coursegen",
                    "beat",
                    "-l",
                    "warning",
                    "-s",
                    str(self.workdir / "beat-schedule"),
                    "--max-interval",
                    "1",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def stop(self) -> None:
        for process in [*self.workers.values(), *self.others]:
            process.terminate()
        for process in [*self.workers.values(), *self.others]:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.redis:
            self.redis.kill()


class StuckWatcher(threading.Thread):
    """Samples the watchdog's query (`selectors.jobs_stuck`) every couple of seconds: a job it
    ever returns was running with no live task and no progress for longer than the watchdog
    allows. Errors while the database restarts are skipped."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.seen, self.stopping = interval, set[UUID](), threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                now = CourseGenerationJob.objects.values_list(Now(), flat=True)[:1]
                when = now.first()
                if when is not None:
                    self.seen.update(jobs_stuck(now=when).values_list("pk", flat=True))
            except DatabaseError:
                pass
            finally:
                connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _db_tolerant(predicate, False):
            return
        time.sleep(0.1)
    raise CommandError(message)


def _db_tolerant(read: Callable[[], Any], fallback: Any) -> Any:
    """A read of the run's own that rides out the database's restart (the fallback meanwhile)."""
    try:
        return read()
    except DatabaseError:
        connection.close()
        return fallback


class Command(BaseCommand):
    help = (
        "Kill workers, restart Redis, cut the provider off; then count what was lost or paid twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--courses", type=int, default=12, help="courses per batch")
        parser.add_argument("--kills", type=int, default=10)
        parser.add_argument("--outage-s", type=float, default=300.0)
        parser.add_argument("--latency-scale", type=float, default=0.1)
        parser.add_argument("--timeout", type=float, default=600.0, help="per batch, seconds")
        parser.add_argument("--workdir", default=str(ROOT / ".cache" / "chaos"))
        parser.add_argument(
            "--scratch-postgres",
            action="store_true",
            help="initdb and start a PostgreSQL cluster of its own on DATABASE_URL's port, "
            "migrate it, restart it mid-batch and remove it at the end",
        )
        parser.add_argument("--postgres-down-s", type=float, default=5.0)
        parser.add_argument("--rabbitmq-down-s", type=float, default=5.0)
        parser.add_argument("--pg-bin", default=None, help="PostgreSQL's bin folder (Debian's 15)")
        parser.add_argument(
            "--rabbitmq-bin",
            default=None,
            help="RabbitMQ's scripts (Debian's /usr/lib/rabbitmq/bin)",
        )
        parser.add_argument(
            "--storm-cancels", type=int, default=6, help="cancels in each of the two storms"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._check_environment()
        workdir = Path(options["workdir"])
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        stack = Stack(workdir, _redis_port(), self._child_env(workdir, options))
        self._twice = 0
        started = time.monotonic()
        self._postgres = (
            _scratch_postgres(options["pg_bin"]) if options["scratch_postgres"] else None
        )
        rabbitmq = self._rabbitmq = (
            ChaosRabbitMQ(str(settings.CELERY_BROKER_URL), bin_dir=options["rabbitmq_bin"])
            if settings.RABBITMQ_BROKER
            else None
        )
        try:
            if rabbitmq:
                rabbitmq.init()
            figures = self._run_stack(stack, options)
            figures["deadlocks"] = max(
                deadlocks_logged(workdir), self._postgres.deadlocks() if self._postgres else 0
            )
        finally:
            if self._postgres:
                self._postgres.remove()
            if rabbitmq:
                rabbitmq.remove()
        figures["wall_s"] = round(time.monotonic() - started, 1)
        self.stdout.write(json.dumps(figures))
        _judge(figures)

    def _run_stack(self, stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
        watcher = StuckWatcher()
        try:
            if self._postgres:
                self._postgres.init()
                call_command("migrate", interactive=False, verbosity=0)
            stack.start_redis()
            for name in ("w1", "w2"):
                stack.start_worker(name)
            stack.start_beat()
            watcher.start()
            figures = self._run(stack, options)
        finally:
            watcher.stop()
            stack.stop()
        figures["jobs_stuck"] = len(watcher.seen | watchdog_failed(figures.pop("job_ids")))
        return figures

    def _check_environment(self) -> None:
        if settings.CELERY_TASK_ALWAYS_EAGER or not settings.IS_POSTGRES:
            raise CommandError("run through `make chaos`: it needs PostgreSQL and a broker")

    def _child_env(self, workdir: Path, options: dict[str, Any]) -> dict[str, str]:
        env = {
            **os.environ,
            "COURSEGEN_OFFLINE_LATENCY_SCALE": str(options["latency_scale"]),
            "COURSEGEN_OFFLINE_CALL_LOG": str(workdir / "calls.log"),
            "COURSEGEN_OFFLINE_OUTAGE_FILE": str(workdir / "outage"),
            "PYTHONUNBUFFERED": "1",
        }
        return env

    # --- the scenario ----------------------------------------------------------------------------
    def _run(self, stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
        users, base_class = _chaos_users(options["courses"])
        n, kills = options["courses"], faults.Kills(stack)
        self.stdout.write(f"batch: {n} courses, {options['kills']} kill -9 of a worker")
        jobs = self._submit(users, base_class, "Kills")
        self._deliver_twice(jobs)
        for point in range(options["kills"]):
            self._wait_progress(jobs, (point + 1) / (options["kills"] + 2))
            kills.kill("w1" if point % 2 == 0 else "w2")
        finalizes = faults.kill_during_finalize(kills, jobs, timeout=options["timeout"])
        self.stdout.write(f"  a worker killed during {finalizes} finalize(s)")
        all_jobs = self._finish(jobs, options["timeout"])
        self._regenerations_killed(kills, jobs, options["timeout"])

        self.stdout.write(f"batch: {n} courses, Redis restarted mid-batch")
        jobs = self._submit(users, base_class, "Redis restart")
        self._wait_progress(jobs, 0.3)
        stack.restart_redis()
        all_jobs += self._finish(jobs, options["timeout"])

        if self._rabbitmq:
            self.stdout.write(f"batch: {n} courses, RabbitMQ restarted mid-batch")
            jobs = self._submit(users, base_class, "RabbitMQ restart")
            self._wait_progress(jobs, 0.3)
            self._rabbitmq.restart(down_s=options["rabbitmq_down_s"])
            all_jobs += self._finish(jobs, options["timeout"])

        restarts = 0
        if self._postgres:
            self.stdout.write(f"batch: {n} courses, PostgreSQL restarted mid-batch")
            jobs = self._submit(users, base_class, "PostgreSQL restart")
            self._wait_progress(jobs, 0.3)
            self._postgres.restart(down_s=options["postgres_down_s"])
            restarts = self._postgres.restarts
            all_jobs += self._finish(jobs, options["timeout"])

        self.stdout.write(f"batch: {n} courses, {options['outage_s']:.0f}s provider outage")
        jobs = self._submit(users, base_class, "Outage")
        self._wait_progress(jobs, 0.2)
        outage_until = time.time() + options["outage_s"]
        (stack.workdir / "outage").write_text(str(outage_until))
        all_jobs += self._finish(jobs, options["timeout"] + options["outage_s"])

        storm = faults.Storm()
        jobs = self._cancel_storm(storm, users, base_class, options)
        all_jobs += self._finish(jobs, options["timeout"] * 2)
        self._wait_judged(all_jobs, options["timeout"])
        self._wait_regenerated(all_jobs, options["timeout"])
        mismatches = ledger_mismatches(all_jobs)
        if mismatches:
            (stack.workdir / "ledger_mismatches.json").write_text(
                json.dumps(mismatches, indent=1, default=str)
            )
            self.stdout.write(
                f"  {len(mismatches)} job(s) whose cost is not the ledger's: "
                f"{stack.workdir / 'ledger_mismatches.json'}"
            )
        return {
            "kills": kills.kills,
            "broker": "rabbitmq" if self._rabbitmq else "redis",
            "redis_restarts": 1,
            "rabbitmq_restarts": self._rabbitmq.restarts if self._rabbitmq else 0,
            "postgres_restarts": restarts,
            "outage_s": options["outage_s"],
            "regenerations_killed": kills.regenerations,
            "finalizes_killed": kills.finalizes,
            **report(all_jobs, stack.workdir / "calls.log", self._twice),
            "storm_cancels": storm.cancels,
            "storm_cancels_refused": storm.cancels_refused,
            "storm_priority_changes": storm.priority_changes,
            "storm_dispatches": storm.dispatches,
            "storm_errors": storm.errors,
            **faults.cancelled_report(all_jobs, storm),
            "job_ids": all_jobs,
        }

    def _regenerations_killed(self, kills: faults.Kills, jobs: list[UUID], timeout: float) -> None:
        """Regenerate one task of each finished course of the batch, twice over: workers killed
        before the new versions are recorded, then after, before the courses re-assemble."""
        for after_record in (False, True):
            ids = faults.kill_during_regenerations(
                kills, jobs, after_record=after_record, timeout=timeout
            )
            self._wait_requests(ids, timeout)
            when = "after recording" if after_record else "before recording"
            self.stdout.write(f"  {len(ids)} regenerations, workers killed {when}")

    def _cancel_storm(
        self, storm: faults.Storm, users: list[Any], base_class: BaseClass, options: dict[str, Any]
    ) -> list[UUID]:
        """Three courses per user, more than the running slots (the global cap is a batch); a
        storm of cancels and priority changes as they start and again once they are running."""
        n, cancels = options["courses"], options["storm_cancels"]
        self.stdout.write(f"batch: {3 * n} courses, two storms of {cancels} cancels")
        jobs = [
            job for round_ in range(3) for job in self._submit(users, base_class, f"Storm {round_}")
        ]
        faults.cancel_storm(storm, jobs, cancels=cancels, seed=1)
        self._wait_progress(jobs, 0.25)
        faults.cancel_storm(storm, jobs, cancels=cancels, seed=2)
        self.stdout.write(
            f"  {storm.cancels} cancelled, {storm.cancels_refused} too late, "
            f"{storm.priority_changes} priority changes, {storm.dispatches} dispatcher runs"
        )
        return jobs

    def _wait_requests(self, ids: list[int], timeout: float) -> None:
        open_requests = RegenerationRequest.objects.filter(
            pk__in=ids, status__in=[RegenerationStatus.PENDING, RegenerationStatus.RUNNING]
        )
        deadline = time.monotonic() + timeout
        while _db_tolerant(open_requests.exists, True) and time.monotonic() < deadline:
            time.sleep(0.5)

    def _submit(self, users: list[Any], base_class: BaseClass, label: str) -> list[UUID]:
        request = CourseRequest(
            topic=f"Chaos engineering: {label}", num_modules=2, lessons_per_module=3
        )
        # One course per user and batch: the per-user rate limits stay out of the way.
        return [
            services.job_submit(user=user, base_class=base_class, request=request).pk
            for user in users
        ]

    def _deliver_twice(self, jobs: list[UUID]) -> None:
        """Publish a second message for one task of the batch, as a redelivery would."""
        from generation.tasks import run_task

        _wait(
            lambda: GenerationTask.objects.filter(job_id__in=jobs, kind="lesson_section").exists(),
            60,
            "no task was planned",
        )
        task = GenerationTask.objects.filter(job_id__in=jobs, kind="lesson_section").order_by("pk")[
            0
        ]
        run_task.apply_async(args=(task.pk,))
        self._twice = task.pk

    def _wait_progress(self, jobs: list[UUID], fraction: float) -> None:
        target = fraction * len(jobs) * 23  # tasks of a 2x3 course, outline included
        _wait(lambda: _succeeded(jobs) >= target, 300, f"batch stuck below {fraction:.0%}")

    def _wait_judged(self, jobs: list[UUID], timeout: float) -> None:
        """The judge runs after finalize, on its own messages: let it finish before counting."""
        if not settings.COURSEGEN_JUDGE_ENABLED:
            return
        waiting = CourseGenerationJob.objects.filter(pk__in=jobs, status="succeeded").exclude(
            judge_status=JudgeStatus.DONE
        )
        deadline = time.monotonic() + timeout
        while waiting.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.stdout.write(f"  judge: {len(jobs) - waiting.count()}/{len(jobs)} courses judged")

    def _wait_regenerated(self, jobs: list[UUID], timeout: float) -> None:
        """Regenerations (the judge's, the run's own) end on their own messages, after finalize."""
        open_requests = RegenerationRequest.objects.filter(
            task__job_id__in=jobs,
            status__in=[RegenerationStatus.PENDING, RegenerationStatus.RUNNING],
        )
        deadline = time.monotonic() + timeout
        while open_requests.exists() and time.monotonic() < deadline:
            time.sleep(0.5)

    def _finish(self, jobs: list[UUID], timeout: float) -> list[UUID]:
        deadline = time.monotonic() + timeout
        open_jobs = CourseGenerationJob.objects.filter(pk__in=jobs).exclude(
            status__in=["succeeded", "failed", "cancelled"]
        )
        while time.monotonic() < deadline and _db_tolerant(open_jobs.exists, True):
            time.sleep(0.5)
        done = CourseGenerationJob.objects.filter(pk__in=jobs, status="succeeded").count()
        self.stdout.write(f"  {done}/{len(jobs)} succeeded")
        return jobs


def _succeeded(jobs: list[UUID]) -> int:
    return GenerationTask.objects.filter(job_id__in=jobs, status=TaskStatus.SUCCEEDED).count()


def _judge(figures: dict[str, Any]) -> None:
    """Exit non-zero on anything lost, paid twice, stuck, deadlocked or not done."""
    if (
        figures["completed"] != figures["courses"]
        or figures["duplicate_provider_calls"]
        or figures.get("duplicate_judge_calls")
        or figures["duplicate_regeneration_calls"]
        or figures["regenerations_not_succeeded"]
        or figures["courses_not_reassembled"]
    ):
        raise CommandError("chaos run lost work or paid twice")
    if figures["courses_not_scored_once"]:
        raise CommandError("a finished course was not evaluated exactly once")
    if figures["jobs_stuck"] or figures["deadlocks"] or figures["ledger_vs_job_cost_diff_usd"]:
        raise CommandError("a job got stuck, a deadlock happened or the costs disagree")
    if figures["storm_errors"] or figures["cancels_reverted"] or figures["cancelled_open_tasks"]:
        raise CommandError("the cancel storm failed a request or left a cancelled job open")
    if figures["cancelled_slots_held"]:
        raise CommandError("a cancelled job still holds its slot")
    if not (figures["regenerations_killed"] and figures["finalizes_killed"]):
        raise CommandError("no worker was killed during a regeneration or a finalize")
    if figures["broker"] == "rabbitmq" and not figures["rabbitmq_restarts"]:
        raise CommandError("RabbitMQ was not restarted")


def _scratch_postgres(bin_dir: str | None) -> ScratchPostgres:
    db = settings.DATABASES["default"]
    if str(db.get("PORT") or "5432") == "5432":
        # The shared cluster serves everyone else's tests: never the one to restart.
        raise CommandError("--scratch-postgres needs DATABASE_URL on a port of its own (5442)")
    return ScratchPostgres(port=int(db["PORT"]), database=str(db["NAME"]), bin_dir=bin_dir)


def _redis_port() -> int:
    url = str(settings.REDIS_URL)  # the broker's too, unless the broker is RabbitMQ
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _chaos_users(count: int) -> tuple[list[Any], BaseClass]:
    from django.contrib.auth import get_user_model

    from accounts.models import Organisation
    from accounts.services import membership_set

    org, _ = Organisation.objects.get_or_create(slug="chaos", defaults={"name": "Chaos"})
    base_class, _ = BaseClass.objects.get_or_create(organisation=org, name="Chaos class")
    users = []
    for n in range(count):
        user, _ = get_user_model().objects.get_or_create(username=f"chaos-{n}")
        membership_set(user=user, organisation=org, role=Role.ADMIN)
        users.append(user)
    return users, base_class
