"""`make chaos`: fault injection against real worker processes, Redis and PostgreSQL.

It starts its own Redis server (so it can really restart it), two Celery workers (threads pool)
and celery beat (the reconciler), then runs batches of courses with the offline provider while it:
kills -9 a worker at 10 points of a batch and restarts it; restarts Redis in the middle of a batch
(every queued message, chord counter and breaker state is lost); runs a five-minute provider
outage (every call answers 503) in the middle of a batch; and delivers one task's message twice.
The offline provider logs every call it receives, so the figures come from what the provider saw:
`duplicate_provider_calls` counts calls for a task that had already succeeded. A watcher thread
samples the job watchdog's own query all along (`jobs_stuck`); the workers' and beat's logs are
searched for deadlocks. The last line printed is one JSON object.
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
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Now

from accounts.models import BaseClass, Role
from generation import services
from generation.management.chaos_postgres import ScratchPostgres
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    JudgeRun,
    JudgeStatus,
    RegenerationRequest,
    RegenerationStatus,
    TaskStatus,
)
from generation.rubric import HEURISTIC_EVALUATOR
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
        parser.add_argument("--pg-bin", default=None, help="PostgreSQL's bin folder (Debian's 15)")

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
        try:
            report = self._run_stack(stack, options)
            report["deadlocks"] = max(
                _deadlocks_logged(workdir), self._postgres.deadlocks() if self._postgres else 0
            )
        finally:
            if self._postgres:
                self._postgres.remove()
        report["wall_s"] = round(time.monotonic() - started, 1)
        self.stdout.write(json.dumps(report))
        if (
            report["completed"] != report["courses"]
            or report["duplicate_provider_calls"]
            or report.get("duplicate_judge_calls")
            or report["duplicate_regeneration_calls"]
            or report["regenerations_not_succeeded"]
        ):
            raise CommandError("chaos run lost work or paid twice")
        if report["courses_not_scored_once"]:
            raise CommandError("a finished course was not evaluated exactly once")
        if report["jobs_stuck"] or report["deadlocks"] or report["ledger_vs_job_cost_diff_usd"]:
            raise CommandError("a job got stuck, a deadlock happened or the costs disagree")

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
            report = self._run(stack, options)
        finally:
            watcher.stop()
            stack.stop()
        report["jobs_stuck"] = len(watcher.seen | _watchdog_failed(report.pop("job_ids")))
        return report

    def _check_environment(self) -> None:
        if settings.CELERY_TASK_ALWAYS_EAGER or not settings.IS_POSTGRES:
            raise CommandError("run through `make chaos`: it needs PostgreSQL and a Redis broker")

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
        n, kills = options["courses"], 0
        self.stdout.write(f"batch: {n} courses, {options['kills']} kill -9 of a worker")
        jobs = self._submit(users, base_class, "Kills")
        self._deliver_twice(jobs)
        for point in range(options["kills"]):
            self._wait_progress(jobs, (point + 1) / (options["kills"] + 2))
            victim = "w1" if point % 2 == 0 else "w2"
            stack.kill_worker(victim)
            kills += 1
            stack.start_worker(victim)
        all_jobs = self._finish(jobs, options["timeout"])

        self.stdout.write(f"batch: {n} courses, Redis restarted mid-batch")
        jobs = self._submit(users, base_class, "Redis restart")
        self._wait_progress(jobs, 0.3)
        stack.restart_redis()
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
        self._wait_judged(all_jobs, options["timeout"])
        self._wait_regenerated(all_jobs, options["timeout"])
        report = _report(all_jobs, stack.workdir / "calls.log", self._twice)
        return {
            "kills": kills,
            "redis_restarts": 1,
            "postgres_restarts": restarts,
            "outage_s": options["outage_s"],
            **report,
            "job_ids": all_jobs,
        }

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


def _deadlocks_logged(workdir: Path) -> int:
    """Deadlocks PostgreSQL reported to any process of the run (it names them in the error)."""
    return sum(
        log.read_text(errors="replace").count("deadlock detected") for log in workdir.glob("*.log")
    )


def _watchdog_failed(jobs: list[UUID]) -> set[UUID]:
    return set(
        CourseGenerationJob.objects.filter(
            pk__in=jobs, status=JobStatus.FAILED, error__startswith="stopped by the watchdog"
        ).values_list("pk", flat=True)
    )


def _ledger_vs_job_cost(jobs: list[UUID]) -> Decimal:
    """Sum over jobs of |the job's cost - the cost of its tasks' attempts in the ledger|, at the
    job total's precision (6 places): what the ledger paid and what the job says must agree."""
    ledger = dict(
        GenerationAttempt.objects.filter(task__job_id__in=jobs)
        .values_list("task__job_id")
        .annotate(cost=Sum("cost_usd"))
    )
    step = Decimal("0.000001")
    return sum(
        (
            abs(cost - (ledger.get(pk) or Decimal(0)).quantize(step))
            for pk, cost in CourseGenerationJob.objects.filter(pk__in=jobs).values_list(
                "pk", "cost_usd"
            )
        ),
        Decimal(0),
    )


def _succeeded(jobs: list[UUID]) -> int:
    return GenerationTask.objects.filter(job_id__in=jobs, status=TaskStatus.SUCCEEDED).count()


def _scratch_postgres(bin_dir: str | None) -> ScratchPostgres:
    db = settings.DATABASES["default"]
    if str(db.get("PORT") or "5432") == "5432":
        # The shared cluster serves everyone else's tests: never the one to restart.
        raise CommandError("--scratch-postgres needs DATABASE_URL on a port of its own (5442)")
    return ScratchPostgres(port=int(db["PORT"]), database=str(db["NAME"]), bin_dir=bin_dir)


def _redis_port() -> int:
    url = str(settings.CELERY_BROKER_URL)
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


def _report(jobs: list[UUID], call_log: Path, twice: int) -> dict[str, Any]:
    calls = [json.loads(line) for line in call_log.read_text().splitlines() if line.strip()]
    tasks = GenerationTask.objects.filter(job_id__in=jobs)
    succeeded_at: dict[tuple[str, str, str], datetime] = {
        (str(t.job_id), t.kind, t.key): t.finished_at
        for t in tasks.filter(status=TaskStatus.SUCCEEDED)
        if t.finished_at
    }
    # A regeneration (the judge's, or the run's own) calls for a succeeded task on purpose: its
    # calls carry the version number they are for, and are counted apart.
    duplicates = sum(
        1
        for c in calls
        if c.get("variant") is None
        and (when := succeeded_at.get((c["job_id"], c["kind"], c["task_key"])))
        and c["ts"] > when.timestamp()
    )
    statuses = dict(
        CourseGenerationJob.objects.filter(pk__in=jobs)
        .values_list("status")
        .annotate(n=Count("pk"))
    )
    twice_task = tasks.get(pk=twice)
    twice_calls = sum(
        1
        for c in calls
        if (c["job_id"], c["kind"], c["task_key"])
        == (str(twice_task.job_id), twice_task.kind, twice_task.key)
    )
    return {
        "courses": len(jobs),
        "completed": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "lost_jobs": statuses.get("running", 0) + statuses.get("queued", 0),
        "tasks": tasks.count(),
        "provider_calls": len(calls),
        "ledger_attempts": GenerationAttempt.objects.filter(task__job_id__in=jobs).count(),
        "duplicate_provider_calls": duplicates,
        **_regeneration_report(jobs, calls),
        "double_delivered_task_calls": twice_calls,
        "redispatched_runs": tasks.filter(runs__gt=1).count(),
        "deferred_tasks": tasks.filter(deferrals__gt=0).count(),
        "tasks_not_succeeded": tasks.filter(~Q(status=TaskStatus.SUCCEEDED)).count(),
        "ledger_vs_job_cost_diff_usd": float(_ledger_vs_job_cost(jobs)),
        # Finalize may run twice (chord body and reconciler): each course is still scored once
        # by the heuristic at finalize (a judge-triggered regeneration scores it again, later).
        "courses_not_scored_once": CourseGenerationJob.objects.filter(
            pk__in=jobs, status=JobStatus.SUCCEEDED
        )
        .annotate(
            evaluations_n=Count(
                "evaluations",
                filter=Q(
                    evaluations__evaluator=HEURISTIC_EVALUATOR,
                    evaluations__created_at__lte=F("finished_at"),
                ),
            )
        )
        .exclude(evaluations_n=1)
        .count(),
        **_judge_report(jobs, calls),
    }


def _regeneration_report(jobs: list[UUID], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Regenerations under the same faults: each request ends, and none is paid again once its
    version was recorded (a call for that version after the request finished)."""
    requests = RegenerationRequest.objects.filter(task__job_id__in=jobs)
    finished = {
        (str(job_id), kind, key, version): when.timestamp()
        for job_id, kind, key, version, when in requests.filter(
            version__isnull=False, finished_at__isnull=False
        ).values_list("task__job_id", "task__kind", "task__key", "version", "finished_at")
        if when is not None
    }
    regeneration_calls = [c for c in calls if c.get("variant") is not None]
    return {
        "regenerations": requests.count(),
        "regenerations_not_succeeded": requests.exclude(
            status=RegenerationStatus.SUCCEEDED
        ).count(),
        "regeneration_calls": len(regeneration_calls),
        "duplicate_regeneration_calls": sum(
            1
            for c in regeneration_calls
            if (done := finished.get((c["job_id"], c["kind"], c["task_key"], c["variant"])))
            and c["ts"] > done
        ),
    }


def _judge_report(jobs: list[UUID], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The LLM judge under the same faults: every course judged once, no judge call repeated
    after its lesson's run finished (a repeated message must not pay twice)."""
    if not settings.COURSEGEN_JUDGE_ENABLED:
        return {"judge": "off"}
    finished = {
        (str(r.job_id), r.lesson_key): r.finished_at.timestamp()
        for r in JudgeRun.objects.filter(job_id__in=jobs)
        if r.finished_at is not None
    }
    judge_calls = [c for c in calls if c["kind"] == "judge"]
    return {
        "judge_calls": len(judge_calls),
        "duplicate_judge_calls": sum(
            1
            for c in judge_calls
            if (done := finished.get((c["job_id"], c["task_key"]))) and c["ts"] > done
        ),
        "courses_not_judged": CourseGenerationJob.objects.filter(
            pk__in=jobs, status=JobStatus.SUCCEEDED
        )
        .exclude(judge_status=JudgeStatus.DONE)
        .count(),
    }
