"""A throttle on sign-in forms (the admin's and the members' login): COURSEGEN_LOGIN_RATE
attempts per client IP and per username, counted in the shared cache by django-ratelimit.
Without it a password could be guessed at the web tier's full speed."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError

logger = logging.getLogger("coursegen.accounts")


def _username(group: str, request: HttpRequest) -> str:
    return str(request.POST.get("username", "")).strip().lower()[:150]


def login_throttled(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Wrap a login view: a POST over the rate (by IP or by the username tried) gets 429."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method == "POST":
            wait_s = _over_rate(request)
            if wait_s is not None:
                response = HttpResponse(
                    f"Too many sign-in attempts. Try again in {wait_s} seconds.\n",
                    status=429,
                    content_type="text/plain; charset=utf-8",
                )
                response["Retry-After"] = str(wait_s)
                return response
        return view(request, *args, **kwargs)

    return wrapped


def _over_rate(request: HttpRequest) -> int | None:
    """Seconds to wait when either counter is over COURSEGEN_LOGIN_RATE, else None."""
    waits = []
    for key in ("ip", _username):
        try:
            usage = get_usage(
                request,
                group=f"login:{key if isinstance(key, str) else 'username'}",
                key=key,
                rate=settings.COURSEGEN_LOGIN_RATE,
                method="POST",
                increment=True,
            )
        except (RedisError, OSError):
            logger.warning("login throttle unavailable (cache error); allowing the attempt")
            return None
        if usage is not None and usage["should_limit"]:
            waits.append(max(int(usage["time_left"]), 1))
    return max(waits) if waits else None
