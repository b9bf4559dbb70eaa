"""Run a real Celery worker process against the pytest-django test database, with Redis or
RabbitMQ as its broker (the result backend is Redis either way)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from coursegen.celery import app as celery_app

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
def _running(
    command: list[str], *, env: dict[str, str], log_path: Path, ready: str
) -> Iterator[WorkerProcess]:
    """Start a Celery process logging to `log_path`, wait for its `ready` line, and stop it
    (SIGTERM, then SIGKILL after 20 s) when the block ends."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = WorkerProcess(process, log_path)
    try:
        started.wait_for_log(ready, timeout=60)
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def celery_worker(
    tmp_path: Path,
    *,
    concurrency: int = 8,
    pool: str = "threads",
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
        pool,
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
    with _running(command, env=env, log_path=log_path, ready="ready.") as worker:
        yield worker


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
    with _running(command, env=env, log_path=log_path, ready="beat: Starting") as beat:
        yield beat


# RabbitMQ for the worker tests: `make test` sets it (amqp://guest:guest@127.0.0.1:5672); each
# test gets a vhost of its own, so nothing else on that broker is touched. Empty: skipped.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "")


def _rabbitmqctl(*args: str) -> None:
    command = shutil.which("rabbitmqctl")
    if command is None:
        raise RuntimeError("rabbitmqctl not found: the RabbitMQ tests make a vhost with it")
    subprocess.run([command, "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh vhost on TEST_RABBITMQ_URL's broker, its URL yielded, deleted afterwards."""
    if not RABBITMQ_URL:
        pytest.skip("TEST_RABBITMQ_URL is empty")
    name = f"coursegen-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    user = RABBITMQ_URL.split("://", 1)[1].split(":", 1)[0] or "guest"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield f"{RABBITMQ_URL.rstrip('/')}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


@contextmanager
def publishing_to(broker_url: str) -> Iterator[None]:
    """This process's Celery app sends to `broker_url` (as settings.py would configure it for
    that broker) until the block ends; the worker gets CELERY_BROKER_URL in its environment."""
    conf = celery_app.conf
    saved = conf.broker_transport_options, conf.task_default_priority
    saved_env = os.environ.get("CELERY_BROKER_URL")
    _drop_broker_connections()
    os.environ["CELERY_BROKER_URL"] = broker_url  # Celery reads it before its own setting
    conf.broker_transport_options = {"confirm_publish": True}
    conf.task_default_priority = settings.MAX_PRIORITY - 5
    try:
        yield
    finally:
        _drop_broker_connections()
        conf.broker_transport_options, conf.task_default_priority = saved
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env


def _drop_broker_connections() -> None:
    # Celery keeps its app's connection pool, made from broker_url at first use; kombu's registry
    # keeps the pool of each URL (not closed here: the next Redis test gets it back).
    app: Any = celery_app
    app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
