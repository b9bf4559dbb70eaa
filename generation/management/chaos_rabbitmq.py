"""RabbitMQ for `make chaos-rabbitmq`: a node of the run's own, and a real broker restart.

The run restarts its broker, so it must not be the machine's shared RabbitMQ (127.0.0.1:5672,
where other tests keep their vhosts): like the scratch PostgreSQL cluster and the run's own
Redis, the run starts a second RabbitMQ node of its own on the port its broker URL names
(CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5682/coursegen-chaos), with its node name
(`coursegen-chaos-<port>@localhost`), distribution port, Mnesia and log folders, config
(one listener, on 127.0.0.1), no plugins, and Erlang cookie all in a temporary folder; it is
stopped and the folder removed at the end, also when the run fails.

Debian's /usr/sbin wrappers switch to the `rabbitmq` user with `su`, which resets HOME (so the
cookie) and runs in /var/lib/rabbitmq; the run calls the scripts behind them
(/usr/lib/rabbitmq/bin) with RABBITMQ_* variables, which rabbitmq-env and the node honour.
RABBITMQ_CONF_ENV_FILE points at a file of the run's own: Debian's
/etc/rabbitmq/rabbitmq-env.conf names the shared node (NODENAME=rabbit@localhost). The
Erlang cookie is $HOME/.erlang.cookie, HOME being the temporary folder for the node and for
rabbitmqctl alike, so the CLI reaches this node and no other. The node registers with the epmd
already running on 127.0.0.1 (the shared node's) or starts one; an epmd the run started is
stopped at the end.

The restart is the node's RabbitMQ application (`rabbitmqctl stop_app`, a pause, `start_app`):
every connection is dropped, and what survives is what RabbitMQ keeps on disk (the durable
queue's persistent messages).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.management.base import CommandError

# Debian's layout; `--rabbitmq-bin` points elsewhere.
DEFAULT_BIN = "/usr/lib/rabbitmq/bin"
SHARED_PORT = 5672
EPMD_PORT = 4369


class ChaosRabbitMQ:
    """A throwaway RabbitMQ node on the broker URL's port: start, restart, stop and remove."""

    def __init__(self, broker_url: str, *, bin_dir: str | None = None) -> None:
        parts = urlsplit(broker_url)
        self.host, self.port = parts.hostname or "", parts.port or SHARED_PORT
        if self.host not in ("127.0.0.1", "localhost"):
            raise CommandError("the chaos broker URL must name 127.0.0.1: the run starts the node")
        if self.port == SHARED_PORT:
            # The shared node serves everyone else's tests: never the one to restart.
            raise CommandError(
                "the chaos broker URL needs a port of its own (5682), not the shared 5672"
            )
        self.vhost = unquote(parts.path[1:]) or "/"
        self.user = unquote(parts.username or "guest")
        self.bin = Path(bin_dir or DEFAULT_BIN)
        if not (self.bin / "rabbitmq-server").exists():
            raise CommandError(f"no rabbitmq-server in {self.bin}: pass --rabbitmq-bin")
        self.node = f"coursegen-chaos-{self.port}@localhost"
        self.dir: Path | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.epmd_ours = False
        self.dist_port = 0
        self.restarts = 0

    # --- the node --------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        assert self.dir is not None
        d = self.dir
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(d),  # the Erlang cookie: $HOME/.erlang.cookie, made at the first start
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def init(self) -> None:
        """Start the node, wait until it serves, and make the URL's vhost."""
        if _listening(self.port):
            raise CommandError(f"port {self.port} is in use: the chaos run starts its own node")
        self.dist_port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="coursegen-chaos-rabbitmq-"))
        (self.dir / "rabbitmq-env.conf").write_text("# the chaos run's own: see env()\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management listener
        self.epmd_ours = not _listening(EPMD_PORT)
        self.server = subprocess.Popen(
            [str(self.bin / "rabbitmq-server")],
            cwd=self.dir,
            env=self.env(),
            stdout=(self.dir / "server.out").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the run reaches it through remove(), not twice
        )
        self._await_startup()
        if self.vhost != "/":
            self.ctl("add_vhost", self.vhost)
            self.ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")

    def _await_startup(self, timeout: float = 120) -> None:
        """await_startup answers at once while the node is not registered yet: retry it."""
        assert self.server is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.server.poll() is not None:
                raise CommandError(f"the chaos RabbitMQ node exited: see {self.dir}/server.out")
            try:
                self.ctl("await_startup", "--timeout", "30", timeout=60)
                return
            except CommandError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def ctl(self, *args: str, timeout: float = 120) -> None:
        run = subprocess.run(
            [str(self.bin / "rabbitmqctl"), "-q", "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.dir,
        )
        if run.returncode != 0:
            raise CommandError(f"rabbitmqctl {' '.join(args)}: {run.stderr.strip()}")

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
        """Stop the node (and an epmd the run started) and remove its folder."""
        if self.server is not None:
            with contextlib.suppress(CommandError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=60)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.server.pid, 9)
                self.server.wait(10)
            self.server = None
        if self.epmd_ours:
            epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run([epmd, "-kill"], capture_output=True, timeout=10)
            self.epmd_ours = False
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
