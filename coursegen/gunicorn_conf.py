"""Gunicorn settings for the API: `gunicorn -c python:coursegen.gunicorn_conf coursegen.wsgi`.

The shape is the one `make bench` measures (its command line overrides only what it varies):
gevent workers, 2 processes. Each request and each progress event stream
(GET /api/jobs/<id>/events/, generation/events.py) is a greenlet: a stream waiting for its job
to change holds no thread and no database connection, so a process follows a thousand clients'
jobs. psycopg (3.1.14 and later) and redis-py cooperate with gevent's patched sockets; requests
beyond the process's database pool (`DATABASE_POOL_MAX_SIZE`) wait for a connection.
WEB_WORKER_CLASS=gthread gives the previous shape (WEB_THREADS threads per process; each event
stream then holds a thread for its life).
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
worker_class = os.environ.get("WEB_WORKER_CLASS", "gevent").strip() or "gevent"
if worker_class not in ("gthread", "gevent"):
    raise ValueError(f"WEB_WORKER_CLASS must be gthread or gevent, got {worker_class!r}")
workers = _positive_int("WEB_WORKERS", 2)
threads = _positive_int("WEB_THREADS", 8)  # gthread only
# gevent: connections (requests and event streams) one process holds at once.
worker_connections = _positive_int("WEB_WORKER_CONNECTIONS", 1000)
# Behind a proxy or load balancer, a few seconds is enough to reuse its connections.
keepalive = _positive_int("WEB_KEEPALIVE_S", 5)
timeout = _positive_int("WEB_TIMEOUT_S", 30)
accesslog = os.environ.get("WEB_ACCESS_LOG") or None  # "-" for stdout
