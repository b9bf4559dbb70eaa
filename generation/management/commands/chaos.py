"""`make chaos`: fault injection against real worker processes, Redis and PostgreSQL.

It starts its own Redis server (so it can really restart it), two Celery workers (threads pool)
and celery beat (the reconciler), then runs batches of courses with the offline provider while it:
kills -9 a worker at 10 points of a batch and restarts it; restarts Redis in the middle of a batch
(every queued message, chord counter and breaker state is lost); runs a 30-second provider outage
(every call answers 503) in the middle of a batch; and delivers one task's message twice.
The offline provider logs every call it receives, so the figures come from what the provider saw:
`duplicate_provider_calls` counts calls for a task that had already succeeded. The last line
printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, F, Q

from accounts.models import BaseClass, Role
from generation import services
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    JudgeRun,
    JudgeStatus,
    TaskStatus,
)
from generation.rubric import HEURISTIC_EVALUATOR
from generation.schemas import CourseRequest

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


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise CommandError(message)


class Command(BaseCommand):
    help = (
        "Kill workers, restart Redis, cut the provider off; then count what was lost or paid twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--courses", type=int, default=12, help="courses per batch")
        parser.add_argument("--kills", type=int, default=10)
        parser.add_argument("--outage-s", type=float, default=30.0)
        parser.add_argument("--latency-scale", type=float, default=0.1)
        parser.add_argument("--timeout", type=float, default=600.0, help="per batch, seconds")
        parser.add_argument("--workdir", default=str(ROOT / ".cache" / "chaos"))

    def handle(self, *args: Any, **options: Any) -> None:
        self._check_environment()
        workdir = Path(options["workdir"])
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        stack = Stack(workdir, _redis_port(), self._child_env(workdir, options))
        self._twice = 0
        started = time.monotonic()
        try:
            stack.start_redis()
            for name in ("w1", "w2"):
                stack.start_worker(name)
            stack.start_beat()
            report = self._run(stack, options)
        finally:
            stack.stop()
        report["wall_s"] = round(time.monotonic() - started, 1)
        self.stdout.write(json.dumps(report))
        if (
            report["completed"] != report["courses"]
            or report["duplicate_provider_calls"]
            or report.get("duplicate_judge_calls")
        ):
            raise CommandError("chaos run lost work or paid twice")
        if report["courses_not_scored_once"]:
            raise CommandError("a finished course was not evaluated exactly once")

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
        self.stdout.write(f"batch 1: {n} courses, {options['kills']} kill -9 of a worker")
        jobs = self._submit(users, base_class, "Kills")
        self._deliver_twice(jobs)
        for point in range(options["kills"]):
            self._wait_progress(jobs, (point + 1) / (options["kills"] + 2))
            victim = "w1" if point % 2 == 0 else "w2"
            stack.kill_worker(victim)
            kills += 1
            stack.start_worker(victim)
        all_jobs = self._finish(jobs, options["timeout"])

        self.stdout.write(f"batch 2: {n} courses, Redis restarted mid-batch")
        jobs = self._submit(users, base_class, "Redis restart")
        self._wait_progress(jobs, 0.3)
        stack.restart_redis()
        all_jobs += self._finish(jobs, options["timeout"])

        self.stdout.write(f"batch 3: {n} courses, {options['outage_s']:.0f}s provider outage")
        jobs = self._submit(users, base_class, "Outage")
        self._wait_progress(jobs, 0.2)
        outage_until = time.time() + options["outage_s"]
        (stack.workdir / "outage").write_text(str(outage_until))
        all_jobs += self._finish(jobs, options["timeout"] + options["outage_s"])
        self._wait_judged(all_jobs, options["timeout"])
        report = _report(all_jobs, stack.workdir / "calls.log", self._twice)
        return {"kills": kills, "redis_restarts": 1, "outage_s": options["outage_s"], **report}

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

    def _finish(self, jobs: list[UUID], timeout: float) -> list[UUID]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_jobs = CourseGenerationJob.objects.filter(pk__in=jobs).exclude(
                status__in=["succeeded", "failed", "cancelled"]
            )
            if not open_jobs.exists():
                break
            time.sleep(0.5)
        done = CourseGenerationJob.objects.filter(pk__in=jobs, status="succeeded").count()
        self.stdout.write(f"  {done}/{len(jobs)} succeeded")
        return jobs


def _succeeded(jobs: list[UUID]) -> int:
    return GenerationTask.objects.filter(job_id__in=jobs, status=TaskStatus.SUCCEEDED).count()


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
    duplicates = sum(
        1
        for c in calls
        if (when := succeeded_at.get((c["job_id"], c["kind"], c["task_key"])))
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
        "double_delivered_task_calls": twice_calls,
        "redispatched_runs": tasks.filter(runs__gt=1).count(),
        "deferred_tasks": tasks.filter(deferrals__gt=0).count(),
        "tasks_not_succeeded": tasks.filter(~Q(status=TaskStatus.SUCCEEDED)).count(),
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
