"""RabbitMQ as the broker: the settings it gets, and priorities in the order our scale means them
(0 first) on a real worker, on RabbitMQ (x-max-priority) and on Redis (priority steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from generation import messages
from tests.worker import RABBITMQ_URL, ROOT, celery_worker

SETTINGS_PROBE = """
import json
from django.conf import settings
queue, = settings.CELERY_TASK_QUEUES
print(json.dumps({
    "queue_arguments": queue.queue_arguments,
    "transport": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "default_priority": settings.CELERY_TASK_DEFAULT_PRIORITY,
    "beat": {
        k: v.get("options", {}).get("priority") for k, v in settings.CELERY_BEAT_SCHEDULE.items()
    },
    "backend": settings.CELERY_RESULT_BACKEND,
    "prefetch_reduction": settings.CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION,
}))
"""


def _settings_with(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + SETTINGS_PROBE],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "coursegen.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_configures_a_rabbitmq_broker_as_rabbitmq_wants_it() -> None:
    run = _settings_with(
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672/x",
        CELERY_RESULT_BACKEND="",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.splitlines()[-1])

    assert got["queue_arguments"] == {"x-max-priority": 9}
    assert got["transport"] == {"confirm_publish": True}
    assert got["default_priority"] == 4  # our 5, RabbitMQ's way up
    assert got["beat"]["dispatch-queued-jobs"] == 9  # housekeeping first
    assert got["beat"]["reconcile"] == 9
    assert got["backend"] == "redis://127.0.0.1:6379/3"  # chord counters stay in Redis
    assert got["prefetch_reduction"] is False  # it hung workers after a broker restart


def test_it_keeps_redis_priorities_as_they_are() -> None:
    run = _settings_with(CELERY_BROKER_URL="redis://127.0.0.1:6379/3")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.splitlines()[-1])

    assert got["beat"]["dispatch-queued-jobs"] == 0 and got["default_priority"] == 5
    assert got["transport"]["priority_steps"] == list(range(10))


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"REDIS_URL": "", "CELERY_RESULT_BACKEND": ""}, "needs CELERY_RESULT_BACKEND"),
        ({"RABBITMQ_CONSUMER_TIMEOUT_S": "300"}, "RABBITMQ_CONSUMER_TIMEOUT_S"),
        ({"CELERY_RESULT_BACKEND": "rpc://"}, "must be Redis"),
        ({"CELERY_RESULT_BACKEND": "db+postgresql://127.0.0.1/x"}, "must be Redis"),
    ],
)
def test_it_refuses_a_rabbitmq_set_up_that_would_lose_work(env: dict[str, str], error: str) -> None:
    run = _settings_with(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672/x", **env)
    assert run.returncode != 0 and error in run.stderr


def test_it_turns_every_priority_round_for_rabbitmq(monkeypatch: Any) -> None:
    # Celery reads CELERY_BROKER_URL from the environment before its own setting
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/x")
    assert [messages.broker_priority(p) for p in (0, 5, 9)] == [9, 4, 0]
    assert messages.housekeeping_priority() == 9
    assert messages.judge_priority() == 9 - settings.COURSEGEN_JUDGE_PRIORITY

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
    assert [messages.broker_priority(p) for p in (0, 5, 9)] == [0, 5, 9]
    assert messages.housekeeping_priority() == 0


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_runs_priority_0_before_priority_9_on_a_single_busy_worker(
    tmp_path: Path, broker_env: dict[str, str]
) -> None:
    from perf.tasks import probe

    probes = redis.Redis.from_url(str(settings.REDIS_URL))
    probes.delete("perf:probes")
    with celery_worker(tmp_path, concurrency=1, extra_env=broker_env):
        # Given the only worker thread busy (and, prefetch 1, nothing else reserved)
        probe.apply_async(args=("busy", time.time(), 3.0), priority=messages.broker_priority(5))
        _wait_for_probes(probes, 1)
        # When a priority-9 message, then a priority-0 one, wait in the broker
        probe.apply_async(args=("last", time.time(), 0.0), priority=messages.broker_priority(9))
        probe.apply_async(args=("first", time.time(), 0.0), priority=messages.broker_priority(0))
        # Then the priority-0 one runs first, though sent after
        labels = _wait_for_probes(probes, 3)

    assert labels == ["busy", "first", "last"]


def _wait_for_probes(client: redis.Redis, count: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = client.lrange("perf:probes", 0, -1)
        if len(rows) >= count:
            return [json.loads(row)["label"] for row in rows]
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} probes ran")


def test_the_chaos_run_restarts_a_rabbitmq_node_of_its_own_never_the_shared_one() -> None:
    """`make chaos-rabbitmq` restarts its broker: a second node on a port of its own, stopped and
    removed at the end; the shared node (5672, other tests' vhosts) is refused and untouched."""
    import kombu
    import kombu.exceptions
    from django.core.management.base import CommandError

    from generation.management.chaos_postgres import free_port
    from generation.management.chaos_rabbitmq import ChaosRabbitMQ

    if not RABBITMQ_URL or not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.skip("no RabbitMQ on this machine")
    with pytest.raises(CommandError, match="port of its own"):
        ChaosRabbitMQ("amqp://guest:guest@127.0.0.1:5672/coursegen-chaos")
    shared_vhosts = _vhosts()
    port = free_port()
    url = f"amqp://guest:guest@127.0.0.1:{port}/coursegen-chaos-test"
    chaos = ChaosRabbitMQ(url)
    chaos.init()
    folder = chaos.dir
    try:
        assert folder is not None and folder.exists()
        with kombu.Connection(url) as conn:
            conn.connect()
        chaos.restart(down_s=0.5)
        with kombu.Connection(url, connect_timeout=10) as conn:
            conn.connect()  # serves again after the restart
        assert chaos.restarts == 1
        assert "coursegen-chaos-test" not in _vhosts()  # made on its node, not the shared one
    finally:
        chaos.remove()
    assert folder is not None and not folder.exists()
    refused = (OSError, kombu.exceptions.OperationalError)
    with pytest.raises(refused), kombu.Connection(url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
    assert _vhosts() == shared_vhosts  # the shared node was never restarted nor changed


def _vhosts() -> list[str]:
    run = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True)
    return run.stdout.split()
