"""The call log: one JSON line per simulated call, safe across threads and processes (tests and
`make chaos` count provider calls per task from it; the quality judge's calls have kind "judge")."""

from __future__ import annotations

import json
import os
import time

from generation.providers.base import CompletionRequest


def call_log_append(path: str, request: CompletionRequest) -> None:
    context = request.context
    entry = {
        "ts": time.time(),
        "pid": os.getpid(),
        "model": request.model,
        # A judge call is not a call of the task it judges: counts per task must not see it.
        "kind": "judge" if request.purpose == "judge" else request.task_kind.value,
        "task_key": context.get("task_key"),
        "job_id": context.get("job_id"),
        "attempt": context.get("attempt"),
        # A regeneration's version number (none for a task's own run): a call for a task that
        # had succeeded is a duplicate only without it.
        "variant": context.get("variant"),
    }
    line = (json.dumps(entry, default=str) + "\n").encode()
    # O_APPEND plus one write() per line: concurrent writers never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
