"""What each OpenAI-compatible server accepts: one row per (base URL, model), the constraint step
the provider's ladder settled on (generation/providers/openai.py, docs/providers.md)."""

from __future__ import annotations

from django.db import models

from generation.schemas import ConstraintStep


class ProviderConstraint(models.Model):
    base_url = models.CharField(max_length=500)
    model = models.CharField(max_length=200)
    step = models.CharField(
        max_length=32,
        choices=[(s.value, s.value) for s in ConstraintStep],
        help_text="The strongest response_format this server accepted for this model.",
    )
    refusals = models.JSONField(
        default=list,
        blank=True,
        help_text="The stronger steps it refused, each with the status and the server's message.",
    )
    decided_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "course_generation_provider_constraints"
        constraints = [
            models.UniqueConstraint(fields=["base_url", "model"], name="uniq_constraint_per_server")
        ]
        ordering = ["base_url", "model"]
        verbose_name = "provider constraint"

    def __str__(self) -> str:
        return f"{self.model} at {self.base_url}: {self.step}"
