"""503, not 500, when every pooled database connection is busy.

Under gunicorn's gevent worker (coursegen/gunicorn_conf.py) a process accepts up to
WEB_WORKER_CONNECTIONS requests at once while its pool holds DATABASE_POOL_MAX_SIZE connections:
past that, requests wait DATABASE_POOL_TIMEOUT seconds for one and then psycopg_pool raises
PoolTimeout. That is the server being busy, not the request being wrong, so the client gets a
JSON 503 with Retry-After and may try again, like a 429.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from psycopg_pool import PoolTimeout

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def is_pool_timeout(exc: BaseException) -> bool:
    """Django wraps the pool's PoolTimeout in its own OperationalError (the cause)."""
    return isinstance(exc, PoolTimeout) or (
        isinstance(exc, OperationalError) and isinstance(exc.__cause__, PoolTimeout)
    )


class DatabaseBusyMiddleware:
    """Turns a PoolTimeout raised by a view (DRF's included) into a JSON 503."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_pool_timeout(exception):
            return None
        logger.warning(
            "no database connection free within DATABASE_POOL_TIMEOUT: 503 for %s %s",
            request.method,
            request.path,
        )
        response = JsonResponse(
            {"detail": "The service is busy. Retry after the time in Retry-After.", "code": "busy"},
            status=503,
        )
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
