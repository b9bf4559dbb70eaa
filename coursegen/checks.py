"""System checks for the project's own configuration (`manage.py check`; registered by
accounts.apps). The web process runs the secret-key one at start-up too (coursegen/wsgi.py):
gunicorn runs no system checks of its own."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

# The development default in settings.py, and Django's generated development keys.
INSECURE_KEY_PREFIXES = ("insecure-", "django-insecure-")


@checks.register(checks.Tags.security)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if settings.DEBUG or not str(settings.SECRET_KEY).startswith(INSECURE_KEY_PREFIXES):
        return []
    return [
        checks.Error(
            "DJANGO_SECRET_KEY is a known development key and DJANGO_DEBUG is off: sessions, "
            "password resets and signed values could be forged",
            hint="Set DJANGO_SECRET_KEY to a long random value, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'` (the Makefile keeps "
            "one in .secret-key), or DJANGO_DEBUG=true on a development machine.",
            id="coursegen.E001",
        )
    ]


def refuse_insecure_secret_key() -> None:
    """Stop a web process from serving with the development key outside DEBUG."""
    errors = check_secret_key()
    if errors:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{errors[0].msg} ({errors[0].id}). {errors[0].hint}")
