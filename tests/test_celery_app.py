"""Worker start-up hooks of the Celery app."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from celery.concurrency import get_implementation
from django.conf import settings
from django.db import connections

from coursegen.celery import app, unpool_prefork


@pytest.mark.parametrize(("pool", "kept"), [("prefork", False), ("threads", True), ("solo", True)])
def test_a_prefork_worker_drops_the_psycopg_pool(monkeypatch: Any, pool: str, kept: bool) -> None:
    options = connections["default"].settings_dict.setdefault("OPTIONS", {})
    monkeypatch.setitem(options, "pool", {"min_size": 1, "max_size": 2})
    worker = SimpleNamespace(pool_cls=get_implementation(pool))

    unpool_prefork(sender=worker)

    assert ("pool" in options) is kept


def test_threads_share_one_redis_result_backend() -> None:
    """A threads-pool worker's hundreds of threads use one backend and its one connection pool
    (Celery's default is a backend, and Redis connections, per thread)."""
    assert str(settings.CELERY_RESULT_BACKEND).startswith("redis")  # make test's configuration
    main = app.backend  # created once (threads racing to create the first may each build one)
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(app.backend)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(seen) == 3 and all(backend is main for backend in seen)
    assert len({id(backend.client.connection_pool) for backend in seen}) == 1  # type: ignore[attr-defined]


def test_redis_replies_are_parsed_by_hiredis() -> None:
    """The broker, the result backend, the limiter and the cache all speak through redis-py; with
    hiredis (the `redis[hiredis]` extra) it parses replies in C."""
    import redis
    from redis._parsers import _HiredisParser

    client = redis.Redis.from_url(str(settings.REDIS_URL))
    connection = client.connection_pool.get_connection()
    try:
        assert isinstance(connection._parser, _HiredisParser)
    finally:
        client.connection_pool.release(connection)
        client.close()


def test_celery_takes_every_celery_setting_from_django_under_its_own_name() -> None:
    names = [name for name in dir(settings) if name.startswith("CELERY_")]
    assert len(names) > 20

    changed = set(app.conf.changes or {})  # what this process set since (the eager switch)
    for name in names:
        key = name.removeprefix("CELERY_").lower()  # CELERY_TASK_ACKS_LATE: task_acks_late
        if key not in changed:
            assert app.conf[key] == getattr(settings, name), name
    assert len(changed) < len(names) // 4  # most were compared
    assert app.conf.task_acks_late is True and app.conf.task_default_queue == "celery"
