"""Template filters for the course page and the HTML-based exports."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from generation.exports.text import duration as _duration
from generation.exports.text import rich_html

register = template.Library()

_KINDS = {
    "multiple_choice": "Multiple choice",
    "true_false": "True or false",
    "short_answer": "Short answer",
}


@register.filter
def rich(text: str) -> SafeString:
    """Model text (Markdown allowed) as sanitised HTML."""
    return rich_html(text)


@register.filter
def duration(seconds: int) -> str:
    return _duration(seconds)


@register.filter
def humanize_kind(kind: str) -> str:
    return _KINDS.get(kind, kind.replace("_", " ").capitalize())
