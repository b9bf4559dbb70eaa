"""Request-level throttling for every API view, counted in Redis by django-ratelimit.

This is a coarse per-client budget (fixed windows, atomic INCR in the shared cache) that protects
the web tier from a client hammering any endpoint. It is separate from job admission, which is
exact and lives in PostgreSQL (ratelimits/services.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

if TYPE_CHECKING:  # rest_framework.views imports this module while it loads
    from rest_framework.views import APIView

logger = logging.getLogger("coursegen.ratelimits")


class ApiRateThrottle(BaseThrottle):
    """COURSEGEN_API_RATE per user (per IP before login), shared by all API views."""

    group = "api"

    def __init__(self) -> None:
        self.wait_s = 1

    def allow_request(self, request: Request, view: APIView) -> bool:
        try:
            usage = get_usage(
                request,
                group=self.group,
                key="user_or_ip",
                rate=self.rate(),
                increment=True,
            )
        except (RedisError, OSError):
            # Fail open: the cache only guards the web tier; job admission stays exact.
            logger.warning("request throttle unavailable (cache error); allowing the request")
            return True
        if usage is None:
            return True
        self.wait_s = max(int(usage["time_left"]), 1)
        return not usage["should_limit"]

    def rate(self) -> str:
        return str(settings.COURSEGEN_API_RATE)  # read per request: settings may change

    def wait(self) -> float:
        return float(self.wait_s)
