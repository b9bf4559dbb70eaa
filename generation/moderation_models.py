"""Content held by moderation, as its own admin list: a proxy of the task rows whose output
moderation flagged (docs/safety.md). Imported by the app's ready() so Django registers it."""

from __future__ import annotations

from generation.models import GenerationTask


class HeldContent(GenerationTask):
    class Meta:
        proxy = True
        verbose_name = "held content"
        verbose_name_plural = "held content"
        permissions = [("review_heldcontent", "Can release or reject content held by moderation")]
