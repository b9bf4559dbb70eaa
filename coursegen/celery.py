"""The Celery application. All of its settings live in settings.py under the CELERY_ prefix."""

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coursegen.settings")


def django_celery_settings() -> dict[str, Any]:
    """Django's CELERY_* settings under Celery's own names (CELERY_TASK_ACKS_LATE is
    task_acks_late), read once. Celery looks its settings up on every message it sends and every
    task it runs: through the CELERY_ namespace on Django's settings object a lookup cost three
    times a dict's (in the profile, a tenth of the CPU of sending a course's chord)."""
    from django.conf import settings

    prefix = "CELERY_"
    return {
        name.removeprefix(prefix).lower(): getattr(settings, name)
        for name in dir(settings)
        if name.startswith(prefix)
    }


app = Celery("coursegen")
app.add_defaults(django_celery_settings)  # a promise: read when the configuration is first needed
app.autodiscover_tasks()

logger = logging.getLogger("coursegen")


@signals.worker_init.connect
def unpool_prefork(sender: Any = None, **kwargs: Any) -> None:
    """A psycopg pool is not fork-safe: a prefork child that inherits one hangs for ever when
    Celery closes it after the fork (its pool threads exist only in the parent), and Celery
    closes the pool after every task anyway. Prefork workers use plain connections instead."""
    from django.db import connections

    pool_cls = getattr(sender, "pool_cls", None)
    name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    if "prefork" not in str(name):
        return
    for alias in connections:
        options = connections[alias].settings_dict.get("OPTIONS", {})
        if options.pop("pool", None):
            logger.warning("prefork pool: DATABASE_POOL ignored for %r (not fork-safe)", alias)


@signals.worker_init.connect
@signals.worker_ready.connect
def freeze_heap(**kwargs: Any) -> None:
    """Before the pool starts (prefork children inherit it) and once the consumer is up."""
    from coursegen.runtime import freeze_startup_heap

    freeze_startup_heap()


@signals.worker_init.connect
@signals.worker_ready.connect
def threads_batch(**kwargs: Any) -> None:
    """Before the pool starts its threads (they inherit it), then once more for any thread
    started in between."""
    from coursegen.runtime import worker_threads_batch

    worker_threads_batch()


@signals.worker_init.connect
def concurrency_cap(sender: Any = None, **kwargs: Any) -> None:
    from coursegen.runtime import concurrency_cap_check

    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int):
        concurrency_cap_check(concurrency)
