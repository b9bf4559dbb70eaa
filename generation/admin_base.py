"""Bases the admin modules share (generation/admin.py, generation/quality_admin.py)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyInline(admin.options.InlineModelAdmin):
    """Rows written by the pipeline, shown as they are: every field read-only, none added or
    deleted here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> Any:
        return self.fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ReadOnlyTabularInline(ReadOnlyInline, admin.TabularInline):
    pass


class ReadOnlyStackedInline(ReadOnlyInline, admin.StackedInline):
    pass
