"""RabbitMQ for `make chaos-rabbitmq`: a vhost of the run's own, and a real broker restart.

The run's broker URL names its vhost (CELERY_BROKER_URL=amqp://.../coursegen-chaos-6391); it is
made fresh at the start and deleted at the end, so no other vhost is touched. The restart is the
node's RabbitMQ application (`rabbitmqctl stop_app`, a pause, `start_app`): every connection is
dropped, and what survives is what RabbitMQ keeps on disk (the durable queue's persistent
messages). It needs rabbitmqctl on this machine and the right to run it (root or rabbitmq).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from urllib.parse import unquote, urlsplit

from django.core.management.base import CommandError


class ChaosRabbitMQ:
    def __init__(self, broker_url: str) -> None:
        parts = urlsplit(broker_url)
        self.vhost = unquote(parts.path.lstrip("/"))
        self.user = unquote(parts.username or "guest")
        if not self.vhost or self.vhost == "/":
            # The default vhost may hold someone else's queues: the run wants its own.
            raise CommandError("the chaos broker URL must name a vhost of its own: amqp://.../name")
        command = shutil.which("rabbitmqctl")
        if command is None:
            raise CommandError("rabbitmqctl not found: the RabbitMQ chaos run restarts the broker")
        self.command = command
        self.restarts = 0

    def ctl(self, *args: str, timeout: float = 120) -> None:
        run = subprocess.run(
            [self.command, "-q", *args], capture_output=True, text=True, timeout=timeout
        )
        if run.returncode != 0:
            raise CommandError(f"rabbitmqctl {' '.join(args)}: {run.stderr.strip()}")

    def init(self) -> None:
        self.remove()
        self.ctl("add_vhost", self.vhost)
        self.ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")

    def restart(self, *, down_s: float) -> None:
        """Stop RabbitMQ, leave it down `down_s` seconds, start it and wait until it serves."""
        self.ctl("stop_app")
        try:
            time.sleep(down_s)
        finally:
            self.ctl("start_app")
            self.ctl("await_startup", "--timeout", "120", timeout=180)
        self.restarts += 1

    def remove(self) -> None:
        with contextlib.suppress(CommandError):  # not there
            self.ctl("delete_vhost", self.vhost)
