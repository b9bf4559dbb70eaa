"""Run a real Celery worker process against Redis and the pytest-django test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{needle!r} x{count} not in worker log:\n{self.log()[-4000:]}")


def test_database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


@contextmanager
def celery_worker(
    tmp_path: Path,
    *,
    concurrency: int = 8,
    extra_env: dict[str, str] | None = None,
    name: str = "worker",
    flush: bool = True,
    preload: str | None = None,
) -> Iterator[WorkerProcess]:
    if flush:
        redis.Redis.from_url(str(settings.CELERY_BROKER_URL)).flushdb()
    log_path = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    # `preload`: a module imported before Celery starts (a test's patch, e.g. a crash point).
    entry = ["-m", "celery"]
    if preload:
        entry = ["-c", f"import {preload}; from celery.__main__ import main; main()"]
    command = [
        sys.executable,
        *entry,
        "-A",
        "coursegen",
        "worker",
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-l",
        "info",
        "-n",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = WorkerProcess(process, log_path)
    try:
        worker.wait_for_log("ready.", timeout=60)
        yield worker
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def celery_beat(
    tmp_path: Path, *, extra_env: dict[str, str] | None = None, name: str = "beat"
) -> Iterator[WorkerProcess]:
    """A real celery beat process sending the schedule of settings.CELERY_BEAT_SCHEDULE."""
    log_path = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "coursegen",
        "beat",
        "-l",
        "info",
        "-s",
        str(tmp_path / f"{name}-schedule"),
        "--pidfile",
        str(tmp_path / f"{name}.pid"),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    beat = WorkerProcess(process, log_path)
    try:
        beat.wait_for_log("beat: Starting", timeout=60)
        yield beat
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
