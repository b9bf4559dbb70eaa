"""The correlation id that follows one job from the web request through every Celery task.

It lives in a contextvar. The web side sets it per request (CorrelationIdMiddleware) and
job_submit switches it to the job's own id; Celery carries it in a message header
(monitoring.signals) and each task restores it for the time it runs. The log handler stamps it
on every row, so one admin filter shows a job's whole story.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from uuid import UUID

from django.http import HttpRequest, HttpResponse

HEADER = "X-Correlation-ID"
CLIENT_HEADER = "X-Client-Correlation-ID"  # the caller's own id, echoed and logged beside ours
CELERY_HEADER = "coursegen_correlation_id"  # Celery's own `correlation_id` is the task id

_correlation_id: ContextVar[str | None] = ContextVar("coursegen_correlation_id", default=None)
_client_correlation_id: ContextVar[str | None] = ContextVar(
    "coursegen_client_correlation_id", default=None
)


def get_client_correlation_id() -> str | None:
    return _client_correlation_id.get()


def get_correlation_id() -> str | None:
    return _correlation_id.get()


def set_correlation_id(value: UUID | str | None) -> Token[str | None]:
    return _correlation_id.set(str(value) if value else None)


def reset_correlation_id(token: Token[str | None]) -> None:
    _correlation_id.reset(token)


@contextmanager
def correlation_scope(value: UUID | str | None) -> Iterator[None]:
    """Run a block (e.g. publishing another job's tasks) under the given correlation id."""
    token = set_correlation_id(value)
    try:
        yield
    finally:
        reset_correlation_id(token)


def parse_correlation_id(raw: str | None) -> str | None:
    """A caller-supplied id is kept only when it is a UUID (the column's type)."""
    if not raw:
        return None
    try:
        return str(UUID(raw.strip()))
    except ValueError:
        return None


class CorrelationIdMiddleware:
    """One correlation id per request, always minted here: a caller's X-Correlation-ID naming
    another job's id would otherwise write this request's rows into that job's story. A valid
    caller id is kept apart: logged as `client_correlation_id` and echoed in
    X-Client-Correlation-ID.

    The response carries the id in force at its end, which is the job's after a submission.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        cid = str(uuid.uuid4())
        client_cid = parse_correlation_id(request.headers.get(HEADER))
        token = set_correlation_id(cid)
        client_token = _client_correlation_id.set(client_cid)
        try:
            response = self.get_response(request)
            response[HEADER] = get_correlation_id() or cid
            if client_cid:
                response[CLIENT_HEADER] = client_cid
            return response
        finally:
            _client_correlation_id.reset(client_token)
            reset_correlation_id(token)
