"""`make demo-local`: one course written by a real model on this machine, end to end.

Starts llama-cpp-python's server with SmolLM2-135M-Instruct (generation/providers/local_server.py)
on a free port of 127.0.0.1, runs `manage.py generate_course` against it as a separate process
(settings are read at start, so the provider's base URL must be in its environment), and stops the
server whatever happens: success, failure or Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation.providers.local_server import MODEL_ALIAS, LocalServerError, running_server

# What the course run needs to use the local model well (docs/providers.md#a-real-local-model).
LOCAL_ENV = {
    "COURSEGEN_PROVIDER": "openai",
    "OPENAI_API_KEY": "",
    "COURSEGEN_MODEL_COMPLEX": MODEL_ALIAS,
    "COURSEGEN_MODEL_SIMPLE": MODEL_ALIAS,
    "COURSEGEN_MODEL_PRICES": f"{MODEL_ALIAS}=0",
    # Greedy and seeded: a 135M model wanders off at the server's default temperature (0.8).
    "OPENAI_TEMPERATURE": "0",
    "OPENAI_SEED": "1",
    "OPENAI_MAX_TOKENS": "2048",
    # A loaded 2-core machine writes a few tokens a second under a grammar: be patient.
    "OPENAI_TIMEOUT_S": "600",
    "CELERY_TASK_SOFT_TIME_LIMIT": "900",
    "CELERY_TASK_TIME_LIMIT": "960",
    # A grammar cannot tie a multiple-choice answer to one of the options.
    "COURSEGEN_QUESTION_TYPES": "true_false,short_answer",
    # llama.cpp has no moderation endpoint; the rule-based one screens the output instead. The
    # judge would be the same 135M model grading itself: off. The cache would answer a second
    # run without the model: off.
    "COURSEGEN_MODERATION_PROVIDER": "offline",
    "COURSEGEN_JUDGE_ENABLED": "false",
    "COURSEGEN_CACHE_ENABLED": "false",
}


class Command(BaseCommand):
    help = "Generate a small course with a real local model (llama.cpp + SmolLM2-135M)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default="demo-teacher")
        parser.add_argument("--topic", default="Rivers and valleys")
        parser.add_argument("--modules", type=int, default=1)
        parser.add_argument("--lessons", type=int, default=1)
        parser.add_argument("--questions", type=int, default=2)
        parser.add_argument("--timeout", type=float, default=1800)
        parser.add_argument("--json", action="store_true", help="as generate_course --json")
        parser.add_argument("--log", default="", help="the server's log (default: a temp file)")

    def handle(self, *args: Any, **options: Any) -> None:
        log = Path(options["log"] or tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.stdout.write(f"Starting llama_cpp.server with {MODEL_ALIAS} (log: {log}) ...")
        started = time.monotonic()
        try:
            with running_server(log_path=log) as server:
                self.stdout.write(
                    f"Server ready at {server.base_url} in {time.monotonic() - started:.0f}s; "
                    "generating (a 135M model on 2 cores: minutes, and poor content)."
                )
                code = self._generate(server.base_url, options)
        except LocalServerError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            raise CommandError("interrupted; the local server was stopped") from None
        self.stdout.write("Local server stopped.")
        if code != 0:
            raise CommandError(f"generate_course exited with {code} (server log: {log})")

    def _generate(self, base_url: str, options: dict[str, Any]) -> int:
        command = [
            sys.executable, "manage.py", "generate_course", "--user", options["user"],
            "--topic", options["topic"], "--modules", str(options["modules"]),
            "--lessons", str(options["lessons"]), "--questions", str(options["questions"]),
            "--timeout", str(options["timeout"]),
        ]  # fmt: skip
        if options["json"]:
            command.append("--json")
        env = {**os.environ, **LOCAL_ENV, "OPENAI_BASE_URL": base_url}
        return subprocess.run(command, env=env, check=False).returncode
