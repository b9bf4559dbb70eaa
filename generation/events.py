"""Job progress as server-sent events: `GET /api/jobs/<id>/events/` (docs/api.md#progress-events).

A poll costs a whole request (middleware, authentication, the throttle, two statements) every
few seconds per waiting client, whether anything changed or not. A stream is authenticated once;
after that, one hub per web process reads the progress of every job its streams follow in one
statement every COURSEGEN_EVENTS_POLL_S (queue positions included) and wakes only the streams
whose job changed. A stream holds no database connection while it waits, and under the gevent
worker (coursegen/gunicorn_conf.py) no thread either: a thousand clients following their jobs
cost the web one statement a second per process instead of 500 requests a second.

Each event carries exactly what GET /api/jobs/<id>/progress/ answers (the same serializer); the
first is sent at once, the stream ends after the job's terminal event (or after
COURSEGEN_EVENTS_MAX_S; the client reconnects and gets the current state first), and a comment
line every COURSEGEN_EVENTS_HEARTBEAT_S keeps proxies from closing a quiet stream and tells the
server when the client has gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import StreamingHttpResponse
from rest_framework.utils.encoders import JSONEncoder

from generation.models import JobStatus
from generation.selectors import jobs_progress
from generation.serializers import JobProgressOutputSerializer

logger = logging.getLogger(__name__)

TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
CONTENT_TYPE = "text/event-stream"
# One event of the stream, as OpenAPI describes it (its fields; `data` is JobProgress as JSON).
EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["progress"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The body of GET /api/jobs/{job_id}/progress/ (JobProgress) as JSON.",
        },
        "retry": {"type": "integer", "description": "Milliseconds to wait before reconnecting."},
    },
    "required": ["event", "data"],
}


def encode(data: dict[str, Any]) -> bytes:
    """One `progress` event (JSON on one data line)."""
    body = json.dumps(data, cls=JSONEncoder, separators=(",", ":"))
    return b"event: progress\ndata: " + body.encode() + b"\n\n"


@dataclass(eq=False)
class Subscription:
    """One stream's interest in one job: the newest event the hub saw, and a flag it sets."""

    job_id: UUID
    event: bytes = b""
    status: str = ""
    gone: bool = False  # the job no longer exists
    changed: threading.Event = field(default_factory=threading.Event)


class ProgressHub:
    """Per process: the jobs that streams follow, read together every `interval_s`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[UUID, set[Subscription]] = {}
        self._seen: dict[UUID, bytes] = {}  # the last event per job, to wake streams on change
        # Subscribed since the last tick: their first event was read before they subscribed, so
        # the next read goes to them even if it equals _seen (a change seen in between).
        self._fresh: set[Subscription] = set()
        self._thread: threading.Thread | None = None

    def subscribe(self, job_id: UUID) -> Subscription:
        subscription = Subscription(job_id)
        with self._lock:
            self._subscriptions.setdefault(job_id, set()).add(subscription)
            self._fresh.add(subscription)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="progress-hub", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._fresh.discard(subscription)
            following = self._subscriptions.get(subscription.job_id)
            if following is not None:
                following.discard(subscription)
                if not following:
                    del self._subscriptions[subscription.job_id]
                    self._seen.pop(subscription.job_id, None)

    def following(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subscriptions.values())

    def _run(self) -> None:
        while True:
            time.sleep(float(settings.COURSEGEN_EVENTS_POLL_S))
            try:
                self.tick()
            except Exception:  # the hub must outlive a bad tick (a restart of the database...)
                logger.exception("progress hub tick failed")

    def tick(self) -> None:
        """Read every followed job once and wake the streams whose job changed."""
        with self._lock:
            job_ids = list(self._subscriptions)
            fresh, self._fresh = self._fresh, set()
        if not job_ids:
            return
        try:
            jobs = {job.pk: job for job in jobs_progress(job_ids=job_ids)}
        except DatabaseError:
            logger.warning("progress hub: database unavailable, streams wait for the next tick")
            with self._lock:
                self._fresh |= fresh  # still not read since they subscribed
            return
        finally:
            connection.close()  # back to the pool until the next tick
        for job_id in job_ids:
            job = jobs.get(job_id)
            event = b"" if job is None else encode(JobProgressOutputSerializer(job).data)
            with self._lock:
                following = self._subscriptions.get(job_id, set())
                if self._seen.get(job_id) == event:
                    subscriptions = [s for s in following if s in fresh]
                else:
                    self._seen[job_id] = event
                    subscriptions = list(following)
            for subscription in subscriptions:
                subscription.event, subscription.gone = event, job is None
                subscription.status = "" if job is None else str(job.status)
                subscription.changed.set()


hub = ProgressHub()


def progress_stream(
    *, job_id: UUID, first: dict[str, Any], head: bool = False
) -> StreamingHttpResponse:
    """The response for a job the caller may see; `first` is its progress now. `head`: the
    headers only (a server iterates a HEAD body without writing it, so it must not follow)."""
    # The request's pooled connection goes back now: the stream may last minutes, and only the
    # hub reads the database while it does.
    connection.close()
    response = StreamingHttpResponse(
        iter(())
        if head
        else _events(job_id=job_id, first=encode(first), status=str(first["status"])),
        content_type=CONTENT_TYPE,
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _events(*, job_id: UUID, first: bytes, status: str) -> Iterator[bytes]:
    retry_ms = round(float(settings.COURSEGEN_EVENTS_RETRY_S) * 1000)
    if status in TERMINAL:
        yield f"retry: {retry_ms}\n".encode() + first
        return
    # `first` was read in the view, before this subscribes: the hub's next read goes to this
    # stream whatever it saw before (ProgressHub._fresh); an event equal to the one sent is skipped.
    subscription = hub.subscribe(job_id)
    try:
        yield f"retry: {retry_ms}\n".encode() + first
        yield from _follow(subscription, sent=first)
    finally:  # the client went away (a failed write closes the generator) or the stream ended
        hub.unsubscribe(subscription)


def _follow(subscription: Subscription, *, sent: bytes) -> Iterator[bytes]:
    heartbeat = float(settings.COURSEGEN_EVENTS_HEARTBEAT_S)
    deadline = time.monotonic() + float(settings.COURSEGEN_EVENTS_MAX_S)
    while (left := deadline - time.monotonic()) > 0:
        if not subscription.changed.wait(min(heartbeat, left)):
            yield b": keep-alive\n\n"
            continue
        subscription.changed.clear()
        if subscription.gone:
            return
        event, status = subscription.event, subscription.status
        if event != sent:
            yield event
            sent = event
        if status in TERMINAL:
            return
