"""Run calls at the same moment on threads, each thread with its own PostgreSQL connection.

Django keeps one connection per thread, so N threads are N database sessions: as concurrent, for
PostgreSQL, as N web processes. Every thread connects first and waits at a barrier, so the calls
really start together; each thread closes its connection when it is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import connection, connections

T = TypeVar("T")


def run_together(calls: Sequence[Callable[[], T]], *, threads: int | None = None) -> list[T]:
    """Run the calls on `threads` threads (default: one per call) started at once, in order."""
    count = threads or len(calls)
    todo: queue.SimpleQueue[tuple[int, Callable[[], T]]] = queue.SimpleQueue()
    for item in enumerate(calls):
        todo.put(item)
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def work() -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=60)
            while True:
                try:
                    index, call = todo.get_nowait()
                except queue.Empty:
                    return
                results[index] = call()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # release the others rather than leave them waiting
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results
