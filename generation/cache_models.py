"""course_generation_cache: validated outputs kept for reuse (docs/cache.md).

One row per output worth reusing: the fields a lookup filters on exactly (kind, prompt version,
output schema hash, model tier and model, language, level, audience band, organisation scope),
the hash of the normalised context (the exact key), the text embedded for the similarity layer
and its embedding, the output and the quality it scored, and its hits and expiry. Rows whose
prompt version or schema hash is no longer current never match and are purged.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from pgvector.django import VectorField

from accounts.models import Organisation


class CacheEntry(models.Model):
    kind = models.CharField(max_length=32)
    key_hash = models.CharField(max_length=64, help_text="sha256 of the normalised context.")
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="cache_entries"
    )
    shared = models.BooleanField(
        default=False,
        help_text="Other organisations that share their cache may reuse it (their setting and "
        "this organisation's when the entry was stored).",
    )
    prompt_version = models.CharField(max_length=32)
    schema_hash = models.CharField(max_length=16)
    tier = models.CharField(max_length=16)
    model = models.CharField(max_length=100)
    language = models.CharField(max_length=16)
    level = models.CharField(max_length=16)
    audience_band = models.CharField(max_length=32)
    context = models.JSONField(help_text="The normalised context the key was made from.")
    shape_hash = models.CharField(
        max_length=64,
        blank=True,
        help_text="sha256 of the context without its free text (topic, audience, instructions): "
        "the similarity layer compares only entries whose shape is the same.",
    )
    embedded_text = models.TextField(blank=True, help_text="What the similarity layer embeds.")
    embedding = models.BinaryField(null=True, blank=True, help_text="float32, L2-normalised.")
    embedding_model = models.CharField(max_length=100, blank=True)
    output = models.JSONField()
    moderation = models.CharField(max_length=16, blank=True)
    quality = models.FloatField(help_text="The task-level quality it scored when stored (0-1).")
    cost_usd = models.DecimalField(
        max_digits=12, decimal_places=8, default=Decimal(0), help_text="What generating it cost."
    )
    duration_ms = models.IntegerField(default=0, help_text="How long generating it took.")
    source_task = models.ForeignKey(
        "generation.GenerationTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    hits = models.PositiveIntegerField(default=0)
    last_hit_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "course_generation_cache"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["key_hash", "organisation"], name="uniq_cache_key_per_organisation"
            )
        ]
        indexes = [
            models.Index(
                fields=[
                    "kind",
                    "prompt_version",
                    "schema_hash",
                    "model",
                    "language",
                    "level",
                    "audience_band",
                ],
                name="cache_exact_fields",
            ),
            models.Index(fields=["key_hash"], name="cache_key_hash"),
            models.Index(
                fields=["shape_hash", "embedding_model", "organisation"], name="cache_similar"
            ),
        ]
        verbose_name = "cache entry"
        verbose_name_plural = "cache entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.key_hash[:12]} ({self.organisation_id})"


class CacheVector(models.Model):
    """An entry's embedding as a pgvector `vector`, searched through an HNSW index (cosine) per
    embedding size (docs/cache.md#search-at-scale).

    Unmanaged: migration 0016 creates the table (and triggers that delete an entry's vector with
    the entry) only where the server has pgvector; elsewhere it does not exist and is never
    queried (generation/cache/vectors.py). A table of its own, not a column of the
    entry: a hit rewrites the entry's row (hits, expiry), which would insert into the HNSW index
    every time."""

    entry = models.OneToOneField(
        CacheEntry,
        primary_key=True,
        # The database's triggers delete it; Django must not look in a table that may not exist.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="vector",
    )
    dims = models.PositiveSmallIntegerField(
        help_text="The embedding's size: each size has its own partial HNSW index."
    )
    embedding = VectorField()

    class Meta:
        managed = False
        db_table = "course_generation_cache_vectors"

    def __str__(self) -> str:
        return f"vector of {self.entry_id}"


class CacheFalseHit(models.Model):
    """A staff report that the cache served the wrong content: the entry is deleted, this stays."""

    kind = models.CharField(max_length=32)
    key_hash = models.CharField(max_length=64)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="cache_false_hits"
    )
    context = models.JSONField()
    hits = models.PositiveIntegerField(default=0, help_text="Hits the entry had when reported.")
    reported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "course_generation_cache_false_hits"
        ordering = ["-created_at"]
        verbose_name = "cache false hit"

    def __str__(self) -> str:
        return f"false hit on {self.kind} {self.key_hash[:12]}"
