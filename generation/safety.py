"""Content safety for schools (docs/safety.md): a request's text is moderated before admission,
and staff release or reject generated output that moderation held for review.

The moderation of generated output itself runs inside each task's conversation
(generation/llm.py); this module holds the writes around it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from generation import services
from generation.models import (
    GenerationTask,
    ModerationStatus,
    TaskStatus,
)
from generation.moderation import moderation_call
from generation.providers import ModerationRequest, ModerationResult, get_moderation_provider
from generation.regeneration import job_reassemble
from monitoring.logs import log_event

logger = logging.getLogger("coursegen.generation")


class ContentFlagged(Exception):
    """The request's text was flagged: it is refused (4xx) and creates no job."""

    def __init__(self, verdict: ModerationResult, fields: list[str]) -> None:
        self.verdict, self.fields = verdict, fields
        super().__init__(
            f"This request was flagged by content moderation as unsuitable for a school "
            f"({', '.join(verdict.categories)}) and was not accepted."
        )

    def as_body(self) -> dict[str, object]:
        return {
            "detail": str(self),
            "code": "content_flagged",
            "categories": list(self.verdict.categories),
            "flagged_fields": self.fields,
        }


def request_moderate(
    *, user: User, texts: Mapping[str, str], organisation_id: UUID | None = None
) -> ModerationResult | None:
    """Moderate a request's free-text fields (name -> text) before it is admitted, so a refusal
    costs no admission slot. Raises ContentFlagged (logged, and counted in a content-flagged
    alert) when any field is flagged; returns the verdict, or None when moderation is off.
    A moderation endpoint that stays unavailable raises its ProviderError (the caller answers
    503): an unmoderated request is never admitted."""
    moderator = get_moderation_provider()
    named = {name: text for name, text in texts.items() if text and text.strip()}
    if moderator is None or not named:
        return None
    model = settings.COURSEGEN_MODERATION_MODEL
    verdict = moderation_call(
        moderator, ModerationRequest(texts=tuple(named.values()), model=model)
    )
    if not verdict.flagged:
        return verdict
    fields = [name for name, flagged in zip(named, verdict.per_text, strict=False) if flagged]
    refusal = ContentFlagged(verdict, fields or list(named))
    _refusal_record(user=user, refusal=refusal, organisation_id=organisation_id)
    raise refusal


def _refusal_record(*, user: User, refusal: ContentFlagged, organisation_id: UUID | None) -> None:
    categories = list(refusal.verdict.categories)
    log_event(
        "moderation.request_flagged",
        f"request by user {user.pk} refused: flagged for {', '.join(categories)} "
        f"in {', '.join(refusal.fields)}",
        level="warning",
        user=user,
        data={
            "categories": categories,
            "fields": refusal.fields,
            "scores": dict(refusal.verdict.scores),
            "model": refusal.verdict.model,
            "latency_ms": round(refusal.verdict.latency_s * 1000),
            "organisation_id": str(organisation_id) if organisation_id else None,
        },
    )
    services.content_flagged(
        subject=f"requests:user:{user.pk}",
        message=f"A request by user {user.pk} was refused by content moderation "
        f"({', '.join(categories)})",
        data={"user_id": user.pk, "categories": categories, "fields": refusal.fields},
    )


# --- Staff review of held output ------------------------------------------------------------------
@dataclass(frozen=True)
class ReviewOutcome:
    task_id: int
    job_id: UUID
    moderation: str


REVIEWABLE = {
    ModerationStatus.RELEASED: (ModerationStatus.HELD, ModerationStatus.REJECTED),
    ModerationStatus.REJECTED: (ModerationStatus.HELD, ModerationStatus.RELEASED),
}


@transaction.atomic
def task_moderation_review(*, task_id: int, decision: ModerationStatus, by: User) -> ReviewOutcome:
    """Release held output into the course (and its exports), or reject it (it stays out; a
    teacher or staff regenerate the task for a new version, which is moderated again). The
    course re-assembles either way."""
    task = GenerationTask.objects.select_for_update().get(pk=task_id)
    if task.status != TaskStatus.SUCCEEDED or task.moderation not in REVIEWABLE[decision]:
        raise services.GenerationError(
            f"{task.kind} {task.key} is {task.moderation or 'not moderated'}, not reviewable"
        )
    GenerationTask.objects.filter(pk=task.pk).update(
        moderation=decision, moderation_reviewed_by=by, moderation_reviewed_at=timezone.now()
    )
    job_reassemble(job_id=task.job_id)
    log_event(
        f"moderation.output_{decision}",
        f"{task.kind} {task.key} {decision} by {by.get_username()} "
        f"(flagged for {', '.join(task.moderation_categories)})",
        task=task,
        user=by,
        data={"categories": task.moderation_categories, "decision": str(decision)},
    )
    return ReviewOutcome(task.pk, task.job_id, str(decision))
