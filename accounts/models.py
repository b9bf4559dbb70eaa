"""Tenancy: organisations, their classes, and memberships that give each user a role.

A user's role is read from Membership rows only, never from a request.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    STUDENT = "student", "Student"
    TEACHER = "teacher", "Teacher"
    ADMIN = "admin", "Admin"


class Organisation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    share_generation_cache = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Reuse cached course content of other organisations that share theirs, and "
        "share this organisation's own. Off: teachers' instructions stay within it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "organisations"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BaseClass(models.Model):
    """A class (the specification's `base_class`) that courses are generated for."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="classes")
    name = models.CharField(max_length=200)
    subject = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "base_classes"
        ordering = ["organisation__name", "name"]
        verbose_name = "class"
        verbose_name_plural = "classes"
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="uniq_class_name_per_org")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.organisation})"


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STUDENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "memberships"
        constraints = [
            models.UniqueConstraint(fields=["user", "organisation"], name="uniq_membership")
        ]
        indexes = [models.Index(fields=["organisation", "role"])]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} in {self.organisation}"
