"""Worker start-up hooks of the Celery app."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.concurrency import get_implementation
from django.db import connections

from coursegen.celery import unpool_prefork


@pytest.mark.parametrize(("pool", "kept"), [("prefork", False), ("threads", True), ("solo", True)])
def test_a_prefork_worker_drops_the_psycopg_pool(monkeypatch: Any, pool: str, kept: bool) -> None:
    options = connections["default"].settings_dict.setdefault("OPTIONS", {})
    monkeypatch.setitem(options, "pool", {"min_size": 1, "max_size": 2})
    worker = SimpleNamespace(pool_cls=get_implementation(pool))

    unpool_prefork(sender=worker)

    assert ("pool" in options) is kept
