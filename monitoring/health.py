"""Health checks for GET /api/health/course-generation (readiness; /health/live is liveness).

Failing any of database, redis, broker, workers or capacity makes the service unhealthy (503).
Queue depth and breaker states are reported and can only warn: a long queue is the design (jobs
wait, they are not refused) and an open breaker has a fallback tier. Details never include URLs
or credentials: errors are reported as the exception's class and a redacted message.

The report is computed at most once per MONITORING_HEALTH_CACHE_S by all web processes together
(the shared cache): one caller takes a short lock and runs the checks; the others get the last
report meanwhile, so a burst of calls costs one database query and one broker ping, not one each.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from generation.selectors import capacity_now, provider_constraints

# Other code (the circuit breaker) registers a function returning {model: "closed"|"open"|...}.
BREAKER_STATE_PROVIDERS: list[Callable[[], dict[str, str]]] = []
_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^@/\s]*@", re.IGNORECASE)


@dataclass
class Check:
    name: str
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)
    warning: bool = False


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": _CREDENTIALS.sub(r"\1***@", str(exc))[:300]}


def _timed(name: str, probe: Callable[[], dict[str, Any]]) -> Check:
    started = time.monotonic()
    try:
        detail = probe()
        ok = detail.pop("ok", True)
    except Exception as exc:
        detail, ok = _error(exc), False
    detail["ms"] = round((time.monotonic() - started) * 1000, 1)
    return Check(name, bool(ok), detail)


def _redis_ping(url: str) -> dict[str, Any]:
    timeout = settings.MONITORING_HEALTH_PING_TIMEOUT_S
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()
    return {}


def check_database() -> Check:
    def probe() -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"vendor": connection.vendor}

    return _timed("database", probe)


def check_redis() -> Check:
    url = settings.REDIS_URL
    if not url:
        return Check("redis", True, {"configured": False})
    return _timed("redis", lambda: _redis_ping(url))


def _broker_url() -> str:
    from coursegen.celery import app

    return str(app.conf.broker_url or "")


def check_broker() -> Check:
    url = _broker_url()
    if url.startswith("memory"):
        return Check("broker", True, {"configured": False, "mode": "eager"})
    if url.startswith(("redis://", "rediss://")):
        return _timed("broker", lambda: _redis_ping(url))
    return _timed("broker", _kombu_connect)


def _kombu_connect() -> dict[str, Any]:
    from coursegen.celery import app

    with app.connection_for_read() as conn:
        conn.ensure_connection(
            max_retries=1, timeout=math.ceil(settings.MONITORING_HEALTH_PING_TIMEOUT_S)
        )
    return {}


def check_workers(*, broker_ok: bool) -> Check:
    if _broker_url().startswith("memory"):
        return Check("workers", True, {"mode": "eager: tasks run in the web process"})
    if not broker_ok:
        return Check("workers", False, {"error": "broker unreachable"})

    def probe() -> dict[str, Any]:
        from coursegen.celery import app

        replies = app.control.ping(timeout=settings.MONITORING_HEALTH_PING_TIMEOUT_S) or []
        return {"ok": bool(replies), "live": len(replies)}

    return _timed("workers", probe)


def check_capacity() -> Check:
    def probe() -> dict[str, Any]:
        now = capacity_now()
        cap = settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS
        return {"ok": now["running"] <= cap, "running": now["running"], "cap": cap}

    check = _timed("capacity", probe)
    threshold = (
        settings.MONITORING_CAPACITY_WARN_FRACTION * settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS
    )
    check.warning = check.ok and check.detail.get("running", 0) >= threshold
    return check


def check_queue() -> Check:
    check = _timed("queue", lambda: {"depth": capacity_now()["queued"]})
    threshold = (
        settings.MONITORING_CAPACITY_WARN_FRACTION * settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS
    )
    check.warning = check.detail.get("depth", 0) >= threshold
    check.ok = True  # jobs wait in the queue by design; depth can only warn
    return check


def check_breakers() -> Check:
    states: dict[str, str] = {}
    for provider in BREAKER_STATE_PROVIDERS:
        try:
            states.update(provider())
        except Exception as exc:
            return Check("breakers", True, {"states": states, **_error(exc)}, warning=True)
    opened = sorted(model for model, state in states.items() if state != "closed")
    return Check("breakers", True, {"states": states}, warning=bool(opened))


def _host(base_url: str) -> str:
    """A server's host and port: never its whole URL, nor any credentials in it."""
    return urlsplit(base_url).netloc.rpartition("@")[2]


def check_constraints() -> Check:
    """The constraint step each OpenAI-compatible server and model settled on (the openai
    provider's ladder); informational, it never fails or warns."""

    def probe() -> dict[str, Any]:
        rows = provider_constraints()
        return {
            "servers": [
                {"server": _host(r.base_url), "model": r.model, "step": r.step} for r in rows
            ]
        }

    check = _timed("constraints", probe)
    check.ok = True  # a database failure is the database check's to report
    return check


def health_report() -> dict[str, Any]:
    checks = [check_database(), check_redis(), check_broker()]
    checks.append(check_workers(broker_ok=checks[-1].ok))
    checks += [check_capacity(), check_queue(), check_breakers(), check_constraints()]
    failing = [c.name for c in checks if not c.ok]
    return {
        "status": "unhealthy" if failing else "healthy",
        "failing": failing,
        "warnings": [c.name for c in checks if c.warning],
        "checks": {c.name: {"ok": c.ok, **c.detail} for c in checks},
    }


_REPORT_KEY = "health:report"
_LAST_KEY = "health:report:last"  # kept longer: what callers get while the next one is computed
_LOCK_KEY = "health:report:lock"
_PROCESS_LOCK = threading.Lock()
_PROCESS_REPORT: dict[str, Any] = {}


def cached_health_report() -> dict[str, Any]:
    """The latest report, at most MONITORING_HEALTH_CACHE_S old, shared by every caller."""
    try:
        return _shared_report()
    except (redis.RedisError, OSError):
        # The shared cache is down (the report says so): share within this process instead.
        return _process_report()


def _process_report() -> dict[str, Any]:
    with _PROCESS_LOCK:
        report, at = _PROCESS_REPORT.get("report"), _PROCESS_REPORT.get("at", 0.0)
        if report is None or time.monotonic() - at > settings.MONITORING_HEALTH_CACHE_S:
            report = health_report()
            _PROCESS_REPORT.update(report=report, at=time.monotonic())
        return dict(report)


def _shared_report() -> dict[str, Any]:
    report = cache.get(_REPORT_KEY)
    if report is not None:
        return dict(report)
    # Longer than the slowest run of the checks, so a crashed holder cannot block them for long.
    lock_s = max(5, math.ceil(settings.MONITORING_HEALTH_PING_TIMEOUT_S * 4))
    if cache.add(_LOCK_KEY, 1, timeout=lock_s):
        try:
            report = health_report()
            report["checked_at"] = time.time()
            cache.set(_REPORT_KEY, report, timeout=settings.MONITORING_HEALTH_CACHE_S)
            cache.set(_LAST_KEY, report, timeout=max(60, lock_s * 2))
        finally:
            cache.delete(_LOCK_KEY)
        return dict(report)
    return dict(_report_of_the_lock_holder(lock_s))


def _report_of_the_lock_holder(wait_s: float) -> dict[str, Any]:
    """Another caller runs the checks: its last report at once, or wait for this one."""
    last = cache.get(_LAST_KEY)
    if last is not None:
        return dict(last)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        report = cache.get(_REPORT_KEY)
        if report is not None:
            return dict(report)
    return {"status": "unhealthy", "failing": ["health"], "warnings": [], "checks": {}}
