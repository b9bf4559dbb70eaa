"""`make bench`: throughput at scale on real processes; prints a table, then one JSON line.

Processes: our own redis-server, gunicorn (the web API), Celery workers and beat, against the
PostgreSQL database named by DATABASE_URL. Phases:

1. queries — one 4x3 course runs in this process with Celery eager, counting every SQL statement.
   priority — a backlog of low-priority probes, then high-priority ones: priority steps on one
   queue against two queues. pools — 30 courses at once: threads -c 300 and -c 1000, gevent -c 1000.
2. floor — the Celery floor under the cpu phase: no-op courses of the same shape (an outline
   task, then a chord of 42 tasks and its body) on the same broker, workers and pool; CPU-seconds
   of workers, Redis and this process (the submitter) per course.
   cpu — latency 0: `--cpu-users` users submit courses through the HTTP API until `--cpu-courses`
   are done, following them as the throughput phase's users do; CPU-seconds of web, workers,
   beat, Redis and this database's PostgreSQL backends per course, and its ratio to the floor.
3. critical path — full latency, an idle system: one course; its slowest chain of provider calls
   (the outline, then the slowest chord task) against its wall time from submit to finish.
4. throughput — full latency: 100 users, each submitting its next course when the last ends;
   after `--warmup` seconds, courses finished per hour over `--duration` seconds, and the submit
   endpoint's latency percentiles.
   users1000 — 1,000 API users submit and poll as the throughput phase's do, for
   `--u1000-ramp` then `--u1000-duration` seconds: submit and poll latency (as the users see it
   and as gunicorn logged it) and the web's CPU.
5. ratelimited — the offline provider's emulated requests-per-minute limit set to `--rl-share`
   of what `--rl-users` users (admins, teachers and students in turn) would use unlimited: the
   share of the limit used, the share of calls answered 429, and per priority the course wall
   time over its own critical path.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from accounts.models import BaseClass, Membership, Organisation, Role
from generation.models import (
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
    Priority,
)
from generation.schemas import CourseRequest, TaskKind
from perf import breakdown, load, procs

PROBE_BACKLOG, PROBE_URGENT, PROBE_CONCURRENCY, PROBE_SLEEP_S = 400, 40, 16, 0.05
# A 4x3 course's chord: per lesson a section, an assessment and brain bytes (36), per module a
# summary (4), the mind map and the metadata (generation/services/planning.plan_units).
FLOOR_WIDTH = 4 * 3 * 3 + 4 + 2
# The complex model's calls of a 4x3 course (the outline, and per lesson a section, an
# assessment and brain bytes): the model whose limit binds first, the simple one has 6.
COMPLEX_CALLS = 1 + 4 * 3 * 3
# The emulated provider's request bucket (generation/providers/ratelimit.py), refilled to now:
# {admitted, refused, requests held, now}, read at one instant. ARGV: rpm.
BUCKET_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local s = redis.call('HMGET', KEYS[1], 'admitted', 'refused', 'r', 'ts')
local rpm = tonumber(ARGV[1])
local held = tonumber(s[3]) or rpm
held = math.min(rpm, held + math.max(0, now - (tonumber(s[4]) or now)) * rpm / 60)
return {tonumber(s[1]) or 0, tonumber(s[2]) or 0, tostring(held), tostring(now)}
"""
CRITICAL_PATH_AT_FULL_LATENCY_S = 25.3  # the critical phase's figure (docs/performance.md)
RL_ROLES = (Role.ADMIN, Role.TEACHER, Role.STUDENT)
# A course holds a worker slot for ~342 s of calls at full latency: 30 courses at once need ~1,000
# calls in flight on one worker, what a -c 300 pool cannot hold (docs/performance.md#worker-pool).
POOLS = [("threads", 300), ("threads", 1000), ("gevent", 1000)]
POOL_COURSES, POOL_LATENCY_SCALE = 30, 1.0
TARGETS = {
    "wall_over_critical_path": ("<=", 1.10),
    "cpu_s_per_course": ("<=", 0.30),
    "courses_per_hour": (">=", 6000),
    "under_load_wall_over_critical_path": ("<=", 1.3),
    "submit_p99_ms": ("<=", 50),
    "cpu_over_celery_floor": ("<=", 2.5),
    "provider_limit_used": (">=", 0.90),
    "provider_429_share": ("<=", 0.02),
    "high_priority_wall_p95_over_critical_path": ("<=", 1.5),
    "users1000_submit_p99_ms": ("<=", 150),
}


class Command(BaseCommand):
    help = "Benchmark throughput on real processes; the last line printed is one JSON object."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--redis-port", type=int, default=6393)
        parser.add_argument("--users", type=int, default=100)
        parser.add_argument("--cpu-courses", type=int, default=120)
        parser.add_argument("--cpu-users", type=int, default=20, help="users in the cpu phase")
        parser.add_argument("--warmup", type=float, default=75.0)
        parser.add_argument("--ramp", type=float, default=45.0, help="users start spread over")
        parser.add_argument("--duration", type=float, default=180.0)
        parser.add_argument("--poll", type=float, default=2.0, help="users' status poll, seconds")
        parser.add_argument(
            "--event-share",
            type=float,
            default=0.9,
            help="share of the cpu, throughput and users1000 users that follow their jobs by "
            "server-sent events (the rest poll every --poll s; every second in the cpu phase)",
        )
        # Four processes of 400 threads on two cores: a process spends at most one core (the
        # GIL), and a course holds ~340 thread-seconds of calls, so 100 users' courses need
        # ~1,400 slots to run without waiting (docs/performance.md#worker-pool).
        parser.add_argument("--workers", type=int, default=4, help="Celery worker processes")
        parser.add_argument("--pool", default="threads", choices=["threads", "gevent", "prefork"])
        parser.add_argument("--concurrency", type=int, default=400, help="per worker process")
        # Web and workers share two cores here: four worker sessions at an equal weight left the
        # web waiting for a CPU (submit p99 4.4 s in a full run), so the workers run as a
        # co-located deployment should run them (docs/operations.md#web-and-workers-on-one-host):
        # their sessions at nice 19 and their threads under SCHED_BATCH. 0 / other: equal shares.
        parser.add_argument(
            "--worker-nice", type=int, default=19, help="nice value of the workers' sessions"
        )
        parser.add_argument(
            "--worker-sched",
            default="batch",
            choices=["other", "batch"],
            help="the workers' Linux scheduling policy (WORKER_SCHED_BATCH, coursegen/runtime.py)",
        )
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--web-threads", type=int, default=8)
        parser.add_argument("--web-worker-class", default="", choices=["", "gthread", "gevent"])
        parser.add_argument(
            "--web-keepalive",
            type=int,
            default=30,
            help="gunicorn keep-alive seconds (0: a connection per request, as behind a proxy)",
        )
        parser.add_argument(
            "--phases",
            default="queries,priority,pools,floor,cpu,critical,throughput,users1000,ratelimited",
        )
        parser.add_argument("--profile", default="", help="py-spy a worker in the cpu phase")
        parser.add_argument(
            "--profile-web",
            default="",
            help="py-spy (wall clock) a web worker in the throughput phase (FILE) and in "
            "users1000 (FILE.users1000)",
        )
        parser.add_argument("--keep-logs", action="store_true")
        parser.add_argument("--u1000-users", type=int, default=1000)
        parser.add_argument("--u1000-ramp", type=float, default=30.0)
        parser.add_argument("--u1000-duration", type=float, default=60.0)
        parser.add_argument("--rl-users", type=int, default=15, help="ratelimited phase users")
        parser.add_argument(
            "--rl-share",
            type=float,
            default=0.6,
            help="the emulated RPM as a share of what the ratelimited phase's users would use",
        )
        parser.add_argument("--rl-latency", type=float, default=0.5, help="latency scale")
        parser.add_argument("--rl-warmup", type=float, default=30.0)
        parser.add_argument("--rl-duration", type=float, default=120.0)

    def handle(self, *args: Any, **opts: Any) -> None:
        self.opts = opts
        # The LLM judge adds its own calls after finalize; make bench runs it only when asked
        # (BENCH_JUDGE=true), and says which in its JSON.
        self.results: dict[str, Any] = {
            "judge_enabled": settings.COURSEGEN_JUDGE_ENABLED,
            "cache_enabled": settings.COURSEGEN_CACHE_ENABLED,
        }
        self.rows: list[tuple[str, str, str]] = []
        phases = set(opts["phases"].split(","))
        self.logdir = Path(tempfile.mkdtemp(prefix="coursegen-bench-"))
        with self.redis() as redis_proc:
            self.redis_proc = redis_proc
            users = self.users = self.seed(opts["users"])
            if "queries" in phases:
                self.progress("queries")
                self.phase_queries(users[0])
            fleet = self.fleet()
            try:
                if "priority" in phases:
                    self.progress("priority")
                    self.phase_priority(fleet)
                if "pools" in phases:
                    self.progress("pools")
                    self.phase_pools(fleet)
                if not phases - {"queries", "priority", "pools"}:
                    return self.report()
                self.start_web_and_beat(fleet)
                if phases & {"floor", "cpu"}:
                    self.start_workers(fleet, latency=0.0)
                    if "floor" in phases:
                        self.progress("floor")
                        self.phase_floor(fleet)
                    if "cpu" in phases:
                        self.progress("cpu")
                        self.phase_cpu(fleet, users)
                    fleet.stop("worker")
                if phases & {"critical", "throughput", "users1000"}:
                    self.start_workers(fleet, latency=1.0)
                    if "critical" in phases:
                        self.progress("critical")
                        self.phase_critical(users[0])
                    if "throughput" in phases:
                        self.progress("throughput")
                        self.phase_throughput(fleet, users)
                    if "users1000" in phases:
                        self.progress("users1000")
                        self.phase_users1000(fleet)
                    fleet.stop("worker")
                if "ratelimited" in phases:
                    self.progress("ratelimited")
                    self.phase_ratelimited(fleet)
            finally:
                fleet.stop()
                self.results["worker_peak_rss_mb"] = round(
                    max((p.peak_rss for p in fleet.procs if p.role == "worker"), default=0.0), 1
                )
        self.report()
        if not opts["keep_logs"]:
            shutil.rmtree(self.logdir, ignore_errors=True)

    def progress(self, phase: str) -> None:
        """Where a long run is (stderr: stdout is the report)."""
        self.stderr.write(f"bench: {time.strftime('%H:%M:%S')} phase {phase}")

    # --- set-up ----------------------------------------------------------------------------------
    @contextmanager
    def redis(self) -> Iterator[procs.Proc]:
        port = self.opts["redis_port"]
        if procs.port_open(port):
            raise SystemExit(f"port {port} is taken: pass --redis-port (BENCH_REDIS_PORT)")
        fleet = procs.Fleet(dict(os.environ), self.logdir)
        command = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        proc = fleet.start("redis", command)
        procs.wait_for(lambda: procs.port_open(port), 10, "redis-server", proc)
        try:
            yield proc
        finally:
            proc.stop()

    def seed(self, count: int) -> list[tuple[str, str]]:
        """`count` admin users of one organisation with API tokens; (token, class id) each."""
        org, _ = Organisation.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
        klass, _ = BaseClass.objects.get_or_create(organisation=org, name="Bench class")
        users = []
        for i in range(count):
            user, _ = User.objects.get_or_create(username=f"bench-{i:03d}")
            Membership.objects.get_or_create(
                user=user, organisation=org, defaults={"role": Role.ADMIN}
            )
            token, _ = Token.objects.get_or_create(user=user)
            users.append((token.key, str(klass.pk)))
        raise_rate_limits()
        return users

    def child_env(self) -> dict[str, str]:
        port = self.opts["redis_port"]
        return {
            **os.environ,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
            "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
            "REDIS_URL": f"redis://127.0.0.1:{port}/1",
            "DATABASE_POOL": "true",
            "DJANGO_DEBUG": "false",
            "LOG_LEVEL": "warning",
            "COURSEGEN_PROVIDER": "offline",
            "COURSEGEN_API_RATE": "1000000/m",  # the request throttle would count our polls
            "COURSEGEN_CONCURRENCY_MAX": str(self.concurrency_max()),
            "PYTHONUNBUFFERED": "1",
        }

    def concurrency_max(self) -> int:
        """The concurrency limiter's cap for the bench's workers: COURSEGEN_CONCURRENCY_MAX when
        the environment sets it, else at least the fleet's slots (workers x concurrency). The cap
        guards the provider; the offline one sets no concurrency limit, and a cap below the slots
        leaves threads holding tasks that wait for permits nobody asked us to withhold (at 4 x 400
        and a cap of 1,024 the under-load wall was 1.67 against 1.24; docs/performance.md)."""
        cap = int(settings.COURSEGEN_CONCURRENCY_MAX)  # the settings parsed and checked it
        if os.environ.get("COURSEGEN_CONCURRENCY_MAX"):
            return cap
        return max(cap, self.opts["workers"] * self.opts["concurrency"])

    def fleet(self) -> procs.Fleet:
        return procs.Fleet(self.child_env(), self.logdir)

    def start_web_and_beat(self, fleet: procs.Fleet) -> None:
        self.web_port = procs.free_port()
        self.access_log = self.logdir / "web-access.log"
        web = fleet.start(
            "web",
            procs.python_command(
                "-m",
                "gunicorn",
                "coursegen.wsgi:application",
                # The shipped configuration; the options below override only what the bench varies.
                "-c",
                "python:coursegen.gunicorn_conf",
                "-w",
                str(self.opts["web_workers"]),
                "--threads",
                str(self.opts["web_threads"]),
                "-b",
                f"127.0.0.1:{self.web_port}",
                "--keep-alive",
                str(self.opts["web_keepalive"]),
                "--log-level",
                "warning",
                # Server-side request time (µs), to tell the server's latency from the client's.
                "--access-logfile",
                str(self.access_log),
                "--access-logformat",
                "%(m)s %(U)s %(s)s %(D)s",
            ),
            {
                **(
                    {"WEB_WORKER_CLASS": self.opts["web_worker_class"]}
                    if self.opts["web_worker_class"]
                    else {}
                ),
                "DATABASE_POOL_MAX_SIZE": str(self.opts["web_threads"]),
                # gevent takes every request at once and they queue on the pool: on an
                # overloaded machine they wait (as they do for a gthread thread) rather than
                # fail after the 10 s default.
                "DATABASE_POOL_TIMEOUT": "60",
                "DATABASE_POOL_MIN_SIZE": str(min(2, self.opts["web_threads"])),
            },
        )
        self.start_beat(fleet, "beat", self.logdir / "beat-schedule")
        procs.wait_for(lambda: procs.port_open(self.web_port), 30, "gunicorn", web)

    def web_worker_class(self) -> str:
        """--web-worker-class, else the shipped configuration's (WEB_WORKER_CLASS, gevent)."""
        chosen = self.opts["web_worker_class"] or os.environ.get("WEB_WORKER_CLASS", "")
        return chosen.strip() or "gevent"

    def start_workers(
        self,
        fleet: procs.Fleet,
        *,
        latency: float,
        tag: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        names = [f"bench{i}-{tag or f'{latency:g}'}" for i in range(self.opts["workers"])]
        for name in names:
            self.start_worker(
                fleet,
                "worker",
                name,
                pool=self.opts["pool"],
                concurrency=self.opts["concurrency"],
                env={
                    "COURSEGEN_OFFLINE_LATENCY_SCALE": str(latency),
                    "DATABASE_POOL_MAX_SIZE": "12",
                    **(env or {}),
                },
                nice=self.opts["worker_nice"],
                wait=False,
            )
        self.wait_for_workers(fleet, "worker", names)

    def start_worker(
        self,
        fleet: procs.Fleet,
        role: str,
        name: str,
        *,
        pool: str,
        concurrency: int,
        queues: str = "",
        env: dict[str, str] | None = None,
        nice: int = 0,
        wait: bool = True,
    ) -> procs.Proc:
        """A Celery worker of this project as a child process; waits until it answers a ping."""
        command = procs.python_command(
            "-m", "celery", "-A", "coursegen", "worker", "-P", pool, "-c", str(concurrency),
            "-l", "warning", "-n", self.node(name), "--without-gossip", "--without-mingle",
            *(["-Q", queues] if queues else []),
        )  # fmt: skip
        sched = {"WORKER_SCHED_BATCH": str(self.opts["worker_sched"] == "batch").lower()}
        proc = fleet.start(role, command, {**sched, **(env or {})}, nice=nice)
        if wait:
            self.wait_for_workers(fleet, role, [name])
        return proc

    def wait_for_workers(self, fleet: procs.Fleet, role: str, names: list[str]) -> None:
        from coursegen.celery import app

        nodes = [self.node(name) for name in names]
        procs.wait_for(
            lambda: len(app.control.ping(destination=nodes, timeout=0.5) or []) == len(nodes),
            60,
            f"celery {role}",
            fleet.of(role)[-1],
        )

    @staticmethod
    def node(name: str) -> str:
        return f"{name}@{os.uname().nodename}"

    def start_beat(self, fleet: procs.Fleet, role: str, schedule: Path) -> procs.Proc:
        command = procs.python_command(
            "-m", "celery", "-A", "coursegen", "beat", "-l", "warning", "-s", str(schedule)
        )
        return fleet.start(
            role, command, {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "2"}
        )

    # --- phases ----------------------------------------------------------------------------------
    def phase_queries(self, user: tuple[str, str]) -> None:
        """One course end to end in this process (Celery eager) with every statement counted."""
        from coursegen.celery import app
        from generation import services

        token, class_id = user
        owner = Token.objects.get(key=token).user
        previous = app.conf.task_always_eager
        app.conf.task_always_eager = True
        try:
            with CaptureQueriesContext(connection) as queries:
                job = services.job_submit(
                    user=owner,
                    base_class=BaseClass.objects.get(pk=class_id),
                    request=CourseRequest(topic="Counting queries", num_modules=4),
                )
        finally:
            app.conf.task_always_eager = previous
        job.refresh_from_db()
        tasks = job.tasks.count()
        per_task = len(queries) / max(tasks, 1)
        self.results["db_queries_per_task"] = round(per_task, 2)
        self.rows.append(("queries", "one 4x3 course, eager, all statements", f"{len(queries)}"))
        self.rows.append(
            ("queries", f"per task ({tasks} tasks, job {job.status})", f"{per_task:.2f}")
        )
        self.rows.append(
            ("queries", "one API submit (POST /api/jobs/)", str(self.submit_queries(user)))
        )
        connection.close()

    def submit_queries(self, user: tuple[str, str]) -> int:
        """Statements of one submit through the API, in this process; the job is then cancelled
        (its dispatch message waits in Redis for the first workers, which find nothing to do)."""
        from django.test import Client

        from generation import services

        token, class_id = user
        client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
        body = {"base_class": class_id, "topic": "Counting a submit", "num_modules": 4}
        with CaptureQueriesContext(connection) as queries:
            response = client.post("/api/jobs/", body, content_type="application/json")
        if response.status_code != 201:
            raise SystemExit(f"submit failed: {response.status_code} {response.content[:300]!r}")
        services.job_cancel(job_id=response.json()["id"], reason="benchmark: counted only")
        return len(queries)

    def phase_cpu(self, fleet: procs.Fleet, users: list[tuple[str, str]]) -> None:
        count = self.opts["cpu_courses"]
        backends = procs.BackendCpu(str(os.environ["DATABASE_URL"]))
        profiler = self.start_profiler(fleet)
        try:
            before, pg_server = self.cpu_snapshot(fleet), procs.server_cpu()
            backends.mark()
            started = time.monotonic()
            cpu_users = users[: self.opts["cpu_users"]]
            # The users follow their jobs as the throughput phase's do (--event-share by events,
            # the rest poll): polls every second made the web's CPU per course grow with the
            # course's wall time, which grows with the load.
            result = self.drive(
                cpu_users,
                budget=count,
                poll=min(self.opts["poll"], 1.0),
                event_share=self.opts["event_share"],
            )
            elapsed = time.monotonic() - started
            after = self.cpu_snapshot(fleet)
            pg = backends.total()
            pg_server = procs.server_cpu() - pg_server
        finally:
            backends.close()
            self.stop_profiler(profiler)
        done = [c for c in result.finished() if c.status == "succeeded"]
        streaming = load.streaming_users(len(cpu_users), self.opts["event_share"])
        spent = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
        spent["postgres"] = pg
        total = sum(spent.values())
        per_course = total / max(len(done), 1)
        self.results["cpu_s_per_course"] = round(per_course, 3)
        self.results["cpu_courses"] = len(done)
        floor = self.results.get("celery_floor_cpu_s_per_course")
        if floor:  # the floor phase ran first, on the same workers
            self.results["cpu_over_celery_floor"] = round(per_course / floor, 2)
            self.rows.append(("cpu", "over the Celery floor (x)", f"{per_course / floor:.2f}"))
        for role, value in sorted(spent.items()):
            self.rows.append(
                ("cpu", f"{role} CPU-s per course", f"{value / max(len(done), 1):.3f}")
            )
        self.rows.append(("cpu", "total CPU-s per course", f"{per_course:.3f}"))
        self.rows.append(
            (
                "cpu",
                "courses / wall s / failed",
                f"{len(done)} / {elapsed:.1f} / {len(result.finished()) - len(done)}",
            )
        )
        mean_wall = statistics.fmean([(c.finished_at or 0) - c.submitted_at for c in done] or [0])
        self.rows.append(
            (
                "cpu",
                "users (by events / polling every 1 s) / mean course wall s",
                f"{len(cpu_users)} ({streaming} / {len(cpu_users) - streaming}) / {mean_wall:.2f}",
            )
        )
        self.rows.append(
            (
                "cpu",
                "(ref) all postgres processes on the shared server, per course",
                f"{pg_server / max(len(done), 1):.3f}",
            )
        )
        self.rows.append(("cpu", "load errors", str(len(result.errors))))

    def phase_floor(self, fleet: procs.Fleet) -> None:
        """Celery's own cost of a course: no-op courses of the pipeline's shape, as many and as
        many at once as the cpu phase runs, on its workers, broker and pool."""
        from perf.tasks import FLOOR_DONE, floor_outline

        count, at_once = self.opts["cpu_courses"], self.opts["cpu_users"]
        client = redis.Redis.from_url(str(settings.REDIS_URL), socket_timeout=30)
        client.delete(FLOOR_DONE)
        roles = ("worker", "redis", "beat")
        before = self.cpu_snapshot(fleet)
        submitter = procs.cpu_s(os.getpid(), children=False)
        started = time.monotonic()
        sent = done = 0
        while done < count:
            while sent < count and sent - done < at_once:
                floor_outline.apply_async(args=(sent, FLOOR_WIDTH, int(Priority.NORMAL)))
                sent += 1
            if client.blpop([FLOOR_DONE], timeout=2) is not None:
                done += 1
            elif time.monotonic() - started > 300:
                break  # a lost chord: report what finished
        elapsed = time.monotonic() - started
        after = self.cpu_snapshot(fleet)
        spent = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in roles}
        spent["submitter (this process)"] = procs.cpu_s(os.getpid(), children=False) - submitter
        per_course = sum(spent.values()) / max(done, 1)
        self.results["celery_floor_cpu_s_per_course"] = round(per_course, 3)
        for role, value in sorted(spent.items()):
            self.rows.append(("floor", f"{role} CPU-s per course", f"{value / max(done, 1):.3f}"))
        self.rows.append(("floor", "total CPU-s per no-op course", f"{per_course:.3f}"))
        self.rows.append(
            (
                "floor",
                f"courses (outline + chord of {FLOOR_WIDTH} + body) / at once / wall s",
                f"{done} / {at_once} / {elapsed:.1f}",
            )
        )

    def phase_critical(self, user: tuple[str, str]) -> None:
        result = self.drive([user], budget=1, poll=0.1)
        course = result.courses[0]
        job = CourseGenerationJob.objects.get(pk=course.job_id)
        spans = self.task_spans([job.pk])
        critical = breakdown.critical_path_s(spans)
        assert job.finished_at is not None
        wall = (job.finished_at - job.created_at).total_seconds()
        self.results.update(
            critical_path_s=round(critical, 3),
            course_wall_s=round(wall, 3),
            wall_over_critical_path=round(wall / critical, 4) if critical else None,
        )
        self.rows.append(("critical", f"job {job.status}, {len(spans)} tasks", ""))
        self.rows.append(
            ("critical", "critical path s (outline + slowest task)", f"{critical:.2f}")
        )
        self.rows.append(("critical", "course wall s (created -> finished)", f"{wall:.2f}"))
        self.rows.append(
            (
                "critical",
                "client-observed s (poll 0.1 s)",
                f"{(course.finished_at or 0) - course.submitted_at:.2f}",
            )
        )
        connection.close()

    def phase_throughput(self, fleet: procs.Fleet, users: list[tuple[str, str]]) -> None:
        warmup, duration = self.opts["warmup"], self.opts["duration"]
        stop = threading.Event()
        started = time.monotonic()
        result, threads = load.run_users(
            port=self.web_port,
            tokens=[t for t, _ in users],
            base_class=users[0][1],
            poll_s=self.opts["poll"],
            stop=stop,
            budget=load.Budget(None),
            ramp_s=min(self.opts["ramp"], warmup),
            event_share=self.opts["event_share"],
        )
        window_start = started + warmup
        web_profiler = self.start_web_profiler(fleet)
        backends = procs.BackendCpu(str(os.environ["DATABASE_URL"]))
        time.sleep(warmup)
        cpu_before = self.cpu_snapshot(fleet)
        cpu_before["(machine, all processes)"] = procs.machine_busy_s()
        cpu_before["(load generator)"] = procs.cpu_s(os.getpid())
        backends.mark()
        access_from = self.access_log.stat().st_size
        time.sleep(duration)
        window_end = time.monotonic()
        server_submits = self.server_submit_ms(access_from)
        cpu_after = self.cpu_snapshot(fleet)
        cpu_after["postgres"] = backends.total()
        cpu_after["(machine, all processes)"] = procs.machine_busy_s()
        cpu_after["(load generator)"] = procs.cpu_s(os.getpid())
        backends.close()
        for proc in fleet.of("worker"):
            proc.rss_peak()
        stop.set()
        self.stop_profiler(web_profiler)
        for thread in threads:
            thread.join(timeout=30)
        with (self.logdir / "submits.csv").open("w") as handle:
            for c in sorted(result.courses, key=lambda c: c.submitted_at):
                handle.write(f"{c.submitted_at - started:.2f},{c.submit_ms:.1f}\n")
        done = [c for c in result.finished() if window_start <= (c.finished_at or 0) <= window_end]
        ok = [c for c in done if c.status == "succeeded"]
        # Steady state: submits in the window (the first seconds are every user's first submit).
        submits = [c.submit_ms for c in result.courses if c.submitted_at >= window_start]
        all_submits = [c.submit_ms for c in result.courses]
        walls = [(c.finished_at or 0) - c.submitted_at for c in ok]
        # Each course's wall time (created to finished) over its own critical path: 1.0 when a
        # course under load is as fast as alone.
        spans = self.task_spans([UUID(c.job_id) for c in ok])
        ratios = self.wall_over_critical(ok, spans)[0]
        under_load = [r for values in ratios.values() for r in values]
        self.results["under_load_wall_over_critical_path"] = (
            round(statistics.fmean(under_load), 3) if under_load else None
        )
        per_hour = len(ok) * 3600 / (window_end - window_start)
        self.results.update(
            courses_per_hour=round(per_hour),
            submit_p50_ms=round(load.percentile(submits, 50), 1),
            submit_p99_ms=round(load.percentile(submits, 99), 1),
            submit_server_p50_ms=round(load.percentile(server_submits, 50), 1),
            submit_server_p99_ms=round(load.percentile(server_submits, 99), 1),
            submits=len(submits),
        )
        window = window_end - window_start
        self.rows.append(
            (
                "throughput",
                "users / ramp s / warm-up s / window s",
                f"{len(users)} / {self.opts['ramp']:g} / {warmup:g} / {window:.0f}",
            )
        )
        self.rows.append(
            (
                "throughput",
                "courses finished in the window (failed)",
                f"{len(ok)} ({len(done) - len(ok)})",
            )
        )
        self.rows.append(("throughput", "courses per hour", f"{per_hour:.0f}"))
        self.rows.append(
            (
                "throughput",
                "course wall under load s (mean, client-observed)",
                f"{statistics.fmean(walls):.1f}" if walls else "-",
            )
        )
        self.rows.append(
            (
                "throughput",
                f"course wall / own critical path, mean / p50 / p95 (n={len(under_load)})",
                f"{statistics.fmean(under_load):.2f} / {load.percentile(under_load, 50):.2f} / "
                f"{load.percentile(under_load, 95):.2f}"
                if under_load
                else "-",
            )
        )
        self.rows.append(
            (
                "throughput",
                f"submit ms in the window p50 / p99 / max (n={len(submits)})",
                _ms(submits) + f" / {max(submits, default=0):.1f}",
            )
        )
        self.rows.append(
            (
                "throughput",
                f"submit ms server-side (gunicorn) p50 / p99 (n={len(server_submits)})",
                _ms(server_submits),
            )
        )
        self.rows.append(
            (
                "throughput",
                f"submit ms incl. warm-up p50 / p99 (n={len(all_submits)})",
                f"{load.percentile(all_submits, 50):.1f} / {load.percentile(all_submits, 99):.1f}",
            )
        )
        self.wall_steps(ok, spans, phase=[c.job_id for c in result.courses])
        for role, value in sorted(cpu_after.items()):
            busy = (value - cpu_before.get(role, 0.0)) / (window_end - window_start)  # pg: delta
            self.rows.append(("throughput", f"{role} CPU cores busy", f"{busy:.2f}"))
        self.rows.append(("throughput", "load errors", str(len(result.errors))))
        for error in result.errors[:5]:
            self.rows.append(("throughput", "error", error[:90]))
        self.cancel_running()

    def phase_users1000(self, fleet: procs.Fleet) -> None:
        """Many API users at once: each submits a course, then polls its progress every
        `--poll` s until it ends (most wait in the queue behind the global cap), and submits the
        next. Submits are measured over the whole phase (most come during the ramp), polls and
        the web's CPU over the window after it."""
        opts = self.opts
        users = self.seed(opts["u1000_users"])
        stop = threading.Event()
        access_from = self.access_log.stat().st_size
        web_profiler = self.start_web_profiler(fleet, ".users1000")
        # The web's CPU and its run-queue wait over the whole phase, the ramp's submits included:
        # a web waiting for a CPU while workers run held these submits (docs/performance.md).
        phase_start = time.monotonic()
        web_run_start = fleet.cpu_by_role().get("web", 0.0)
        web_wait_start = fleet.cpu_wait_by_role().get("web", 0.0)
        result, threads = load.run_users(
            port=self.web_port,
            tokens=[t for t, _ in users],
            base_class=users[0][1],
            poll_s=opts["poll"],
            stop=stop,
            budget=load.Budget(None),
            ramp_s=opts["u1000_ramp"],
            event_share=opts["event_share"],
        )
        time.sleep(opts["u1000_ramp"])
        web_before, window_start = fleet.cpu_by_role().get("web", 0.0), time.monotonic()
        generator_before = procs.cpu_s(os.getpid(), children=False)
        time.sleep(opts["u1000_duration"])
        window_end = time.monotonic()
        self.stop_profiler(web_profiler)
        window = window_end - window_start
        web_run_end = fleet.cpu_by_role().get("web", 0.0)
        web_cores = (web_run_end - web_before) / window
        phase_s = window_end - phase_start
        web_phase_cores = (web_run_end - web_run_start) / phase_s
        web_wait_cores = (fleet.cpu_wait_by_role().get("web", 0.0) - web_wait_start) / phase_s
        generator_cores = (procs.cpu_s(os.getpid(), children=False) - generator_before) / window
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        submits = [c.submit_ms for c in result.courses]
        polls = [ms for at, ms in list(result.polls) if window_start <= at <= window_end]
        streams = [ms for _, ms in list(result.streams)]
        events = [at for at in list(result.events) if window_start <= at <= window_end]
        server = self.server_ms(access_from)
        server_polls = server["poll"]
        self.results.update(
            users1000_submit_p50_ms=round(load.percentile(submits, 50), 1),
            users1000_submit_p99_ms=round(load.percentile(submits, 99), 1),
            users1000_submit_server_p99_ms=round(load.percentile(server["submit"], 99), 1),
            users1000_poll_p50_ms=round(load.percentile(polls, 50), 1),
            users1000_poll_p99_ms=round(load.percentile(polls, 99), 1),
            users1000_poll_server_p99_ms=round(load.percentile(server_polls, 99), 1),
            users1000_polls_per_s=round(len(polls) / window, 1),
            users1000_web_cpu_cores=round(web_cores, 2),
            users1000_web_cpu_wait_cores=round(web_wait_cores, 2),
            users1000_streams=len(streams),
            users1000_stream_first_event_p99_ms=round(load.percentile(streams, 99), 1),
            users1000_events_per_s=round(len(events) / window, 1),
        )
        rows = [
            ("users / ramp s / window s", f"{len(users)} / {opts['u1000_ramp']:g} / {window:.0f}"),
            (f"submit ms p50 / p99, whole phase (n={len(submits)})", _ms(submits)),
            (f"submit ms server-side p50 / p99 (n={len(server['submit'])})", _ms(server["submit"])),
            (f"poll ms p50 / p99 in the window (n={len(polls)})", _ms(polls)),
            (
                f"poll ms server-side p50 / p99, whole phase (n={len(server_polls)})",
                _ms(server_polls),
            ),
            ("polls per s in the window", f"{len(polls) / window:.1f}"),
            (f"event streams opened, first event ms p50 / p99 (n={len(streams)})", _ms(streams)),
            ("progress events per s in the window", f"{len(events) / window:.1f}"),
            ("web CPU cores busy in the window", f"{web_cores:.2f}"),
            (
                "web CPU cores running / waiting for a CPU, whole phase",
                f"{web_phase_cores:.2f} / {web_wait_cores:.2f}",
            ),
            ("(load generator) CPU cores busy in the window", f"{generator_cores:.2f}"),
            ("load errors", str(len(result.errors))),
        ]
        self.rows += [("users1000", name, value) for name, value in rows]
        for error in result.errors[:3]:
            self.rows.append(("users1000", "error", error[:90]))
        self.cancel_running()

    def server_ms(self, offset: int) -> dict[str, list[float]]:
        """Submit and poll times gunicorn logged after `offset` in its access log."""
        with self.access_log.open() as handle:
            handle.seek(offset)
            lines = [line.split() for line in handle]
        found: dict[str, list[float]] = {"submit": [], "poll": []}
        for f in lines:
            if f[:3] == ["POST", "/api/jobs/", "201"]:
                found["submit"].append(int(f[3]) / 1000)
            elif len(f) == 4 and f[0] == "GET" and f[1].endswith("/progress/"):
                found["poll"].append(int(f[3]) / 1000)
        return found

    def phase_ratelimited(self, fleet: procs.Fleet) -> None:
        """The provider binds: its emulated RPM below what the users would use. Permits then go
        by priority (generation/concurrency.py); what matters is the limit used, few 429s, and
        urgent courses near their critical path while low priority absorbs the wait."""
        from generation.providers.ratelimit import bucket_key
        from generation.schemas import Tier
        from generation.services.common import model_for

        opts = self.opts
        users = self.seed_roles(opts["rl_users"])
        cycle_s = CRITICAL_PATH_AT_FULL_LATENCY_S * opts["rl_latency"] + opts["poll"] / 2
        need_rpm = len(users) * COMPLEX_CALLS * 60 / cycle_s
        rpm = max(1, round(opts["rl_share"] * need_rpm))
        self.start_workers(
            fleet, latency=opts["rl_latency"], tag="rl", env={"COURSEGEN_OFFLINE_RPM": str(rpm)}
        )
        client = redis.Redis.from_url(str(settings.REDIS_URL), socket_timeout=30)
        key = bucket_key(model_for(Tier.COMPLEX))
        seconds, micros = client.time()
        # The provider's bucket starts empty: a full one is a minute of calls in a burst, and the
        # window is to measure the steady rate.
        client.hset(key, mapping={"r": 0, "t": 0, "ts": seconds + micros / 1e6})
        stop = threading.Event()
        result, threads = load.run_users(
            port=self.web_port,
            tokens=[token for token, _, _ in users],
            base_class=users[0][1],
            poll_s=min(opts["poll"], 1.0),
            stop=stop,
            budget=load.Budget(None),
            ramp_s=min(10.0, opts["rl_warmup"]),
        )
        time.sleep(opts["rl_warmup"])
        counts_before = self.bucket_counts(client, key, rpm)
        window_start = time.monotonic()
        time.sleep(opts["rl_duration"])
        counts_after = self.bucket_counts(client, key, rpm)
        window_end = time.monotonic()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        admitted = counts_after[0] - counts_before[0]
        refused = counts_after[1] - counts_before[1]
        window = counts_after[3] - counts_before[3]  # the bucket's clock (Redis's)
        # What the provider could have admitted in the window: the requests its bucket held at
        # the start (saved up in the warm-up) and its refill. Admitted over that is at most 1.
        could = counts_before[2] + rpm * window / 60
        used = admitted / could
        share_429 = refused / max(admitted + refused, 1)
        done = [c for c in result.finished() if window_start <= (c.finished_at or 0) <= window_end]
        ratios, failed = self.wall_over_critical(
            done, self.task_spans([UUID(c.job_id) for c in done])
        )
        self.results.update(
            provider_limit_used=round(used, 3),
            provider_429_share=round(share_429, 4),
            ratelimited_rpm=rpm,
            ratelimited_courses=len(done),
            ratelimited_failed=failed,
        )
        self.rows.append(
            (
                "ratelimited",
                "users (admin/teacher/student) / latency scale / warm-up s / window s",
                f"{len(users)} / {opts['rl_latency']:g} / {opts['rl_warmup']:g} / {window:.0f}",
            )
        )
        self.rows.append(
            (
                "ratelimited",
                "emulated RPM per model / estimated need of the complex model",
                f"{rpm} / {need_rpm:.0f}",
            )
        )
        self.rows.append(
            ("ratelimited", "complex calls admitted / refused (429) in the window",
             f"{admitted} / {refused}")
        )  # fmt: skip
        self.rows.append(
            ("ratelimited", "requests the bucket held at the window's start / end",
             f"{counts_before[2]:.0f} / {counts_after[2]:.0f}")
        )  # fmt: skip
        self.rows.append(
            ("ratelimited", "share of the limit used (admitted / held + refill)", f"{used:.3f}")
        )
        self.rows.append(("ratelimited", "share of calls answered 429", f"{share_429:.4f}"))
        self.rows.append(
            ("ratelimited", "courses finished in the window (failed)", f"{len(done)} ({failed})")
        )
        for label, values in ratios.items():
            key_name = f"{label}_priority_wall_p95_over_critical_path"
            p95 = load.percentile(values, 95)
            self.results[key_name] = round(p95, 3) if values else None
            self.rows.append(
                (
                    "ratelimited",
                    f"{label} priority: wall / critical path p50 / p95 (n={len(values)})",
                    f"{load.percentile(values, 50):.2f} / {p95:.2f}",
                )
            )
        self.rows.append(("ratelimited", "load errors", str(len(result.errors))))
        for error in result.errors[:3]:
            self.rows.append(("ratelimited", "error", error[:90]))
        self.cancel_running()

    @staticmethod
    def bucket_counts(client: Any, key: str, rpm: int) -> tuple[int, int, float, float]:
        """Calls admitted and refused so far, the requests the bucket holds now, and now."""
        admitted, refused, left, now = client.eval(BUCKET_NOW, 1, key, rpm)
        return int(admitted), int(refused), float(left), float(now)

    def wall_over_critical(
        self, courses: list[load.Course], spans: list[breakdown.TaskSpan]
    ) -> tuple[dict[str, list[float]], int]:
        """Per priority class, each succeeded course's wall time (created to finished) over its
        own critical path (the outline's calls, then its slowest task's; `spans`: the courses'
        tasks, from task_spans); and how many failed."""
        jobs = {
            j.pk: j
            for j in CourseGenerationJob.objects.filter(pk__in=[c.job_id for c in courses]).only(
                "priority", "status", "created_at", "finished_at"
            )
        }
        per_job: dict[Any, list[breakdown.TaskSpan]] = {}
        for span in spans:
            per_job.setdefault(span.job_id, []).append(span)
        labels = {Priority.HIGH: "high", Priority.NORMAL: "normal", Priority.LOW: "low"}
        ratios: dict[str, list[float]] = {label: [] for label in labels.values()}
        failed = 0
        for job in jobs.values():
            if job.status != JobStatus.SUCCEEDED or job.finished_at is None:
                failed += job.status == JobStatus.FAILED
                continue
            critical = breakdown.critical_path_s(per_job.get(job.pk, []))
            label = labels.get(Priority(job.priority))
            if critical and label:
                ratios[label].append((job.finished_at - job.created_at).total_seconds() / critical)
        connection.close()
        return ratios, failed

    def task_spans(self, job_ids: list[UUID]) -> list[breakdown.TaskSpan]:
        """The jobs' tasks, each with when it ran and its attempts' provider latency."""
        calls: dict[int, float] = {}
        for task_id, ms in GenerationAttempt.objects.filter(task__job__in=job_ids).values_list(
            "task_id", "latency_ms"
        ):
            calls[task_id] = calls.get(task_id, 0.0) + ms / 1000
        return [
            breakdown.TaskSpan(
                job_id=job_id,
                outline=kind == TaskKind.OUTLINE,
                started=started,
                finished=finished,
                calls_s=calls.get(pk, 0.0),
            )
            for pk, job_id, kind, started, finished in GenerationTask.objects.filter(
                job__in=job_ids
            ).values_list("pk", "job_id", "kind", "started_at", "finished_at")
        ]

    def wall_steps(
        self, courses: list[load.Course], spans: list[breakdown.TaskSpan], *, phase: list[str]
    ) -> None:
        """Where the courses' wall went beyond their critical paths (perf/breakdown.py), and the
        most tasks that ran at once against the workers' slots: whether tasks waited for a
        thread or for a message to be taken."""
        ids = [UUID(c.job_id) for c in courses]
        jobs = [
            breakdown.JobSpan(job_id=pk, created=created, finished=finished)
            for pk, created, finished in CourseGenerationJob.objects.filter(pk__in=ids).values_list(
                "pk", "created_at", "finished_at"
            )
            if finished is not None
        ]
        steps = breakdown.wall_breakdown(jobs, spans)
        # Every task of the phase's courses, warm-up included: they shared the slots.
        every = GenerationTask.objects.filter(
            job__in=[UUID(pk) for pk in phase], started_at__isnull=False
        ).values_list("started_at", "finished_at")
        slots = self.opts["workers"] * self.opts["concurrency"]
        busy = breakdown.occupancy(
            (
                breakdown.TaskSpan(None, False, started, finished, 0.0)
                for started, finished in every
            ),
            slots,
        )
        connection.close()
        for name in breakdown.STEPS:
            if name in steps:
                self.results[f"under_load_{name}"] = round(steps[name], 2)
        self.results["under_load_tasks_running_peak"] = busy.peak
        self.results["under_load_tasks_running_mean"] = round(busy.mean, 1)
        self.results["under_load_slots_full_share"] = round(busy.full_share, 3)
        labels = " / ".join(name.removesuffix("_s").replace("_", " ") for name in breakdown.STEPS)
        values = " / ".join(
            f"{steps[name]:.2f}" if name in steps else "-" for name in breakdown.STEPS
        )
        self.rows.append(
            (
                "throughput",
                f"wall beyond critical path s: {labels} (n={steps.get('jobs', 0):.0f})",
                values,
            )
        )
        self.rows.append(
            (
                "throughput",
                "tasks running at once: peak / mean / worker slots / share of the time all taken",
                f"{busy.peak} / {busy.mean:.0f} / {slots} / {busy.full_share:.3f}",
            )
        )

    def seed_roles(self, count: int) -> list[tuple[str, str, str]]:
        """`count` users of the bench organisation, admins, teachers and students in turn, under
        raised policies; (token, class id, role) each."""
        org = Organisation.objects.get(slug="bench")
        klass = BaseClass.objects.get(organisation=org, name="Bench class")
        users = []
        for i in range(count):
            role = RL_ROLES[i % len(RL_ROLES)]
            user, _ = User.objects.get_or_create(username=f"bench-rl-{role}-{i:03d}")
            Membership.objects.get_or_create(user=user, organisation=org, defaults={"role": role})
            token, _ = Token.objects.get_or_create(user=user)
            users.append((token.key, str(klass.pk), str(role)))
        raise_rate_limits(roles=RL_ROLES)
        connection.close()
        return users

    def phase_priority(self, fleet: procs.Fleet) -> None:
        """Queue ordering under a backlog: Redis priority steps on one queue, or two queues."""
        from coursegen.celery import app
        from perf.tasks import probe

        client = redis.Redis.from_url(str(settings.REDIS_URL))
        for mode in ("priority steps", "two queues"):
            queues = "celery" if mode == "priority steps" else "high,celery"
            worker = self.start_probe_worker(fleet, queues)
            client.delete("perf:probes")
            with app.producer_or_acquire() as producer:
                for i in range(PROBE_BACKLOG):  # a backlog of low-priority work first
                    self.send_probe(probe, producer, mode, "low", Priority.LOW, i)
                for i in range(PROBE_URGENT):  # then high-priority work arrives
                    self.send_probe(probe, producer, mode, "high", Priority.HIGH, i)
            procs.wait_for(
                lambda: client.llen("perf:probes") >= PROBE_BACKLOG + PROBE_URGENT, 300, "probes"
            )
            worker.stop()
            waits: dict[str, list[float]] = {"low": [], "high": []}
            for raw in client.lrange("perf:probes", 0, -1):
                item = json.loads(raw)
                waits[item["label"]].append(item["wait_s"])
            for label, values in waits.items():
                self.rows.append(
                    (
                        "priority",
                        f"{mode}: {label}-priority wait s p50 / p95 (n={len(values)})",
                        f"{load.percentile(values, 50):.2f} / {load.percentile(values, 95):.2f}",
                    )
                )
            self.results[f"priority_{mode.replace(' ', '_')}_high_p95_s"] = round(
                load.percentile(waits["high"], 95), 3
            )

    def send_probe(
        self, probe: Any, producer: Any, mode: str, label: str, priority: int, i: int
    ) -> None:
        queue = "high" if mode == "two queues" and priority <= Priority.HIGH else "celery"
        probe.apply_async(
            args=(label, time.time(), PROBE_SLEEP_S),
            priority=priority,
            queue=queue,
            producer=producer,
        )

    def start_probe_worker(self, fleet: procs.Fleet, queues: str) -> procs.Proc:
        name = f"probe-{queues.replace(',', '-')}"
        return self.start_worker(
            fleet,
            "probe-worker",
            name,
            pool="threads",
            concurrency=PROBE_CONCURRENCY,
            queues=queues,
        )

    def phase_pools(self, fleet: procs.Fleet) -> None:
        """Worker pools for I/O-bound calls: courses at a quarter of the latency, at once."""
        from generation import services

        token, class_id = self.users[0]
        owner = Token.objects.get(key=token).user
        klass = BaseClass.objects.get(pk=class_id)
        for pool, concurrency in POOLS:
            worker = self.start_worker(
                fleet,
                "pool-worker",
                f"pool-{pool}-{concurrency}",
                pool=pool,
                concurrency=concurrency,
                env={
                    "COURSEGEN_OFFLINE_LATENCY_SCALE": str(POOL_LATENCY_SCALE),
                    "DATABASE_POOL_MAX_SIZE": "12",  # as the bench's workers and `make worker`
                    # The limiter's AIMD ramp from 128 would bind first (measured: 187-223
                    # calls waiting for a permit): this phase measures the pool, not the ramp.
                    "COURSEGEN_CONCURRENCY_INITIAL": "1024",
                },
            )
            beat = self.start_beat(fleet, "pool-beat", self.logdir / f"beat-{pool}")
            cpu_before = worker.cpu()
            started = time.monotonic()
            jobs = [
                services.job_submit(
                    user=owner,
                    base_class=klass,
                    request=CourseRequest(topic=f"Pool test {pool} {i}", num_modules=4),
                ).pk
                for i in range(POOL_COURSES)
            ]
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                open_jobs = CourseGenerationJob.objects.filter(
                    pk__in=jobs, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
                ).count()
                if not open_jobs:
                    break
                time.sleep(0.25)
            wall = time.monotonic() - started
            cpu = worker.cpu() - cpu_before
            worker.rss_peak()
            done = CourseGenerationJob.objects.filter(pk__in=jobs, status=JobStatus.SUCCEEDED)
            in_flight = peak_overlap(
                GenerationTask.objects.filter(
                    job_id__in=jobs, started_at__isnull=False, finished_at__isnull=False
                ).values_list("started_at", "finished_at")
            )
            worker.stop()
            beat.stop()
            connection.close()
            self.rows.append(
                (
                    "pools",
                    f"{pool} -c {concurrency}: {POOL_COURSES} courses at once, wall s "
                    "/ worker CPU-s per course / peak tasks running / peak RSS MB / succeeded",
                    f"{wall:.1f} / {cpu / POOL_COURSES:.3f} / {in_flight} / "
                    f"{worker.peak_rss:.0f} / {done.count()}",
                )
            )

    # --- helpers ---------------------------------------------------------------------------------
    def drive(
        self,
        users: list[tuple[str, str]],
        *,
        budget: int,
        poll: float,
        event_share: float = 0.0,
    ) -> load.LoadResult:
        """Users submit until `budget` courses were submitted; returns when all have ended.
        `event_share` of them follow their jobs by server-sent events, the rest poll."""
        stop = threading.Event()
        result, threads = load.run_users(
            port=self.web_port,
            tokens=[t for t, _ in users],
            base_class=users[0][1],
            poll_s=poll,
            stop=stop,
            budget=load.Budget(budget),
            event_share=event_share,
        )
        for thread in threads:
            thread.join(timeout=600)
        return result

    def cpu_snapshot(self, fleet: procs.Fleet) -> dict[str, float]:
        snapshot = fleet.cpu_by_role()
        snapshot["redis"] = self.redis_proc.cpu()
        return snapshot

    def cancel_running(self) -> None:
        from generation.models import QueueEntry, QueueState

        open_jobs = CourseGenerationJob.objects.filter(
            status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
        )
        QueueEntry.objects.filter(job__in=open_jobs).update(state=QueueState.CANCELLED)
        open_jobs.update(status=JobStatus.CANCELLED, error="benchmark ended")
        connection.close()

    def start_profiler(self, fleet: procs.Fleet) -> subprocess.Popen[bytes] | None:
        path = self.opts["profile"]
        if not path:
            return None
        worker = fleet.of("worker")[0]
        command = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "-p",
            str(worker.pid),
            "-o",
            path,
            "-r",
            "200",
            "--gil",
            "--nonblocking",
        ]
        if path.endswith(".txt"):
            command += ["-f", "raw"]
        elif path.endswith(".json"):
            command += ["-f", "speedscope"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def server_submit_ms(self, offset: int) -> list[float]:
        """Submit times gunicorn logged after `offset` in its access log (request read to
        response written, in the web worker)."""
        with self.access_log.open() as handle:
            handle.seek(offset)
            lines = [line.split() for line in handle]
        return [int(f[3]) / 1000 for f in lines if f[:3] == ["POST", "/api/jobs/", "201"]]

    def start_web_profiler(
        self, fleet: procs.Fleet, suffix: str = ""
    ) -> subprocess.Popen[bytes] | None:
        path = self.opts["profile_web"]
        if not path:
            return None
        path += suffix
        child = procs.children_of(fleet.of("web")[0].pid)[0]
        command = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(child)]
        command += ["-o", path, "-r", "100", "--idle", "--nonblocking", "-f", "raw"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def stop_profiler(self, profiler: subprocess.Popen[bytes] | None) -> None:
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(timeout=60)

    def report(self) -> None:
        width = max(len(r[1]) for r in self.rows) if self.rows else 40
        out = self.stdout
        out.write(f"{'phase':<11} {'measure':<{width}} value")
        for phase, name, value in self.rows:
            out.write(f"{phase:<11} {name:<{width}} {value}")
        out.write("")
        for key, (op, target) in TARGETS.items():
            got = self.results.get(key)
            if got is None:  # its phase did not run (--phases)
                out.write(f"target {key} {op} {target}: not measured in this run")
                continue
            met = got <= target if op == "<=" else got >= target
            out.write(f"target {key} {op} {target}: {got} ({'met' if met else 'NOT met'})")
        self.results["settings"] = {
            "workers": self.opts["workers"],
            "pool": self.opts["pool"],
            "concurrency": self.opts["concurrency"],
            "concurrency_max": self.concurrency_max(),  # the limiter's cap (per model)
            "web": f"gunicorn {self.web_worker_class()} {self.opts['web_workers']}x"
            + (str(self.opts["web_threads"]) if self.web_worker_class() == "gthread" else "1000"),
            "worker_sched": self.opts["worker_sched"],
            "worker_nice": self.opts["worker_nice"],  # of the workers' sessions (perf/procs.py)
            "users": self.opts["users"],
            "poll_s": self.opts["poll"],
            "global_max_running_jobs": settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS,
        }
        out.write(json.dumps(self.results))


def peak_overlap(spans: Any) -> int:
    """The most (start, end) spans open at one instant: tasks running at once."""
    edges = sorted(e for start, end in spans for e in ((start, 1), (end, -1)))
    peak = open_ = 0
    for _, step in edges:  # at a tie the end (-1) sorts first: a slot handed on is not two
        open_ += step
        peak = max(peak, open_)
    return peak


def _ms(values: list[float]) -> str:
    return f"{load.percentile(values, 50):.1f} / {load.percentile(values, 99):.1f}"


def raise_rate_limits(roles: tuple[str, ...] = (Role.ADMIN,)) -> None:
    """The benchmark's users are admins (and, in the ratelimited phase, teachers and students)
    under a raised policy: per-user admission must not be what the benchmark measures."""
    from ratelimits.models import RateLimitPolicy

    RateLimitPolicy.objects.filter(role__in=roles).update(
        per_minute=1_000_000,
        per_hour=1_000_000,
        per_day=1_000_000,
        max_concurrent=1_000,
        tasks_per_hour=100_000_000,
        tasks_per_day=100_000_000,
    )
