"""`Idempotency-Key` on submit: the same key and body replay the first response, once.

The key row is written (state in_flight) in its own transaction before the job is created, so a
concurrent request with the same key sees it at once and gets 409. The job links itself to the key
inside the transaction that creates it; the response is stored after. If a process dies between the
two, the replay rebuilds the response from the linked job. Keys expire after
COURSEGEN_IDEMPOTENCY_TTL_S (24 hours); the reconciler deletes expired ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from generation.models import IdempotencyKey, IdempotencyState

# A key in flight for longer than this belongs to a request that died before creating its job.
ABANDONED_AFTER = timedelta(minutes=2)
MAX_KEY_LENGTH = 255


class Verdict(StrEnum):
    PROCEED = "proceed"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class KeyCheck:
    verdict: Verdict
    record: IdempotencyKey


def request_fingerprint(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_key_begin(
    *, user: User, key: str, fingerprint: str, now: datetime | None = None
) -> KeyCheck:
    return _begin(user=user, key=key, fingerprint=fingerprint, now=now or timezone.now())


def _begin(
    *, user: User, key: str, fingerprint: str, now: datetime, again: bool = True
) -> KeyCheck:
    try:
        with transaction.atomic():
            record = IdempotencyKey.objects.create(
                user=user,
                key=key,
                request_hash=fingerprint,
                expires_at=now + timedelta(seconds=settings.COURSEGEN_IDEMPOTENCY_TTL_S),
            )
        return KeyCheck(Verdict.PROCEED, record)
    except IntegrityError:
        found = IdempotencyKey.objects.filter(user=user, key=key).first()
        if found is None and again:  # the request that held the key released it since: take it
            return _begin(user=user, key=key, fingerprint=fingerprint, now=now, again=False)
        if found is None:
            raise  # not this key's uniqueness: another constraint refused the row
        record = found
    return _judge(record, fingerprint=fingerprint, now=now)


def _judge(record: IdempotencyKey, *, fingerprint: str, now: datetime) -> KeyCheck:
    if record.expires_at <= now:
        IdempotencyKey.objects.filter(pk=record.pk, expires_at__lte=now).delete()
        return idempotency_key_begin(user=record.user, key=record.key, fingerprint=fingerprint)
    if record.request_hash != fingerprint:
        return KeyCheck(Verdict.MISMATCH, record)
    if record.state == IdempotencyState.COMPLETED or record.job_id is not None:
        return KeyCheck(Verdict.REPLAY, record)
    if record.created_at < now - ABANDONED_AFTER:
        # The first request died before creating anything: let this one take the key over.
        taken = IdempotencyKey.objects.filter(
            pk=record.pk, job__isnull=True, created_at=record.created_at
        ).update(created_at=now)
        if taken:
            record.created_at = now  # this request's hold on the key: job_submit links by it
            return KeyCheck(Verdict.PROCEED, record)
    return KeyCheck(Verdict.IN_FLIGHT, record)


class KeyTakenOver(Exception):
    """The key was handed to a retry while this request was still working (it looked
    abandoned): the retry's job is the key's, this request's is rolled back."""


def idempotency_key_link(*, record: IdempotencyKey, job_id: Any) -> None:
    """Link the job to the key, inside the transaction that creates the job; KeyTakenOver when
    the key is no longer this request's (taken over by a retry, whose `created_at` differs):
    one key, one job, whichever of the two links first."""
    linked = IdempotencyKey.objects.filter(
        pk=record.pk, job__isnull=True, created_at=record.created_at
    ).update(job=job_id)
    if not linked:
        raise KeyTakenOver(f"Idempotency-Key {record.key!r} was taken over by a retry")


def idempotency_key_complete(*, record: IdempotencyKey, status: int, body: Any) -> None:
    IdempotencyKey.objects.filter(pk=record.pk).update(
        state=IdempotencyState.COMPLETED, response_status=status, response_body=body
    )


def idempotency_key_release(*, record: IdempotencyKey) -> None:
    """The request failed without creating a job: the client may retry with the same key (unless
    a retry has taken it over meanwhile: then it is the retry's to keep)."""
    IdempotencyKey.objects.filter(
        pk=record.pk, job__isnull=True, created_at=record.created_at
    ).delete()
