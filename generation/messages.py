"""The Celery tasks the services send, looked up by their registered names.

The services sit below the Celery tasks that call them (generation/tasks.py), so they cannot
import those tasks back: they name them, and take the task object from the Celery app's
registry when they send. `GenerationConfig.ready` imports generation.tasks, so every process
that sends has them registered (tests/test_architecture.py checks that each name here is one).
What is sent is unchanged: the same task objects, the same calls, eager or not.
"""

from __future__ import annotations

from typing import Any

from celery import Task, current_app
from django.conf import settings

DISPATCH_QUEUE = "generation.tasks.dispatch_queue"
RUN_OUTLINE = "generation.tasks.run_outline"
RUN_TASK = "generation.tasks.run_task"
FINALIZE_JOB = "generation.tasks.finalize_job"
REGENERATE_TASK = "generation.tasks.regenerate_task"
JUDGE_JOB = "generation.tasks.judge_job"
JUDGE_LESSON = "generation.tasks.judge_lesson"

NAMES = (
    DISPATCH_QUEUE,
    RUN_OUTLINE,
    RUN_TASK,
    FINALIZE_JOB,
    REGENERATE_TASK,
    JUDGE_JOB,
    JUDGE_LESSON,
)


def task(name: str) -> Task[Any, Any]:
    """The registered Celery task of that name (KeyError if generation.tasks is not loaded)."""
    return current_app.tasks[name]


def broker_priority(priority: int) -> int:
    """A message priority on our scale (0 runs first, 9 last, as Celery's Redis transport orders
    them) as the broker wants it: RabbitMQ runs the highest number first, up to the queue's
    x-max-priority (settings.MAX_PRIORITY). Every send with a priority goes through here; a
    retry keeps the priority its message was delivered with, already the broker's."""
    if str(current_app.conf.broker_url).startswith("amqp"):
        return int(settings.MAX_PRIORITY) - priority
    return priority


def housekeeping_priority() -> int:
    """Dispatch, finalize and the chord body: before any generation message."""
    return broker_priority(settings.HOUSEKEEPING_PRIORITY)


def judge_priority() -> int:
    """The LLM judge: after generation, so a busy judge never delays a course."""
    return broker_priority(settings.COURSEGEN_JUDGE_PRIORITY)


def always_eager() -> bool:
    """True when tasks run in-process (the embedded demo, the tests): nothing is published."""
    return bool(current_app.conf.task_always_eager)
