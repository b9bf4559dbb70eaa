"""Gunicorn settings for the API: `gunicorn -c python:coursegen.gunicorn_conf coursegen.wsgi`.

The shape is the one `make bench` measures (its command line overrides only what it varies):
gthread workers, 2 processes x 8 threads. Requests spend most of their time waiting on
PostgreSQL and Redis, so threads serve many at once without one process per request; give the
process a database pool at least as large as its threads (`DATABASE_POOL_MAX_SIZE`).
"""

from __future__ import annotations

import os


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        # Gunicorn reports a config module's exception and exits: the message names the variable.
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
worker_class = "gthread"
workers = _positive_int("WEB_WORKERS", 2)
threads = _positive_int("WEB_THREADS", 8)
# Behind a proxy or load balancer, a few seconds is enough to reuse its connections.
keepalive = _positive_int("WEB_KEEPALIVE_S", 5)
timeout = _positive_int("WEB_TIMEOUT_S", 30)
accesslog = os.environ.get("WEB_ACCESS_LOG") or None  # "-" for stdout
