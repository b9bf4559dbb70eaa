"""Request-level throttling for every API view, counted in Redis by django-ratelimit.

This is a coarse per-client budget (fixed windows, atomic INCR in the shared cache) that protects
the web tier from a client hammering any endpoint. It is separate from job admission, which is
exact and lives in PostgreSQL (ratelimits/services.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from coursegen.drf import ThrottledWithBody
from ratelimits.serializers import REQUESTS_WINDOW, RateLimitExceededOutputSerializer

if TYPE_CHECKING:  # rest_framework.views imports this module while it loads
    from rest_framework.views import APIView

logger = logging.getLogger("coursegen.ratelimits")
_PERIOD_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _window_seconds(rate: str) -> int:
    """ "120/m" -> 60, "10/5s" -> 5 (the settings check the form)."""
    period = rate.split("/", 1)[1]
    return int(period[:-1] or 1) * _PERIOD_S[period[-1]]


class ApiRateThrottle(BaseThrottle):
    """COURSEGEN_API_RATE per user (per IP before login), shared by all API views. A refusal
    answers job admission's 429 body (window "requests", role null), with Retry-After."""

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
        if usage["should_limit"]:
            raise ThrottledWithBody(body=self._refusal(usage), wait=self.wait_s)
        return True

    def _refusal(self, usage: dict[str, Any]) -> dict[str, Any]:
        limit, seconds = int(usage["limit"]), _window_seconds(self.rate())
        detail = (
            f"Request was throttled: at most {limit} API requests per {seconds} s per client; "
            f"retry in {self.wait_s} s."
        )
        body = {
            "detail": detail,
            "role": None,
            "window": REQUESTS_WINDOW,
            "window_seconds": seconds,
            "limit": limit,
            "used": usage["count"],
            "reset_at": timezone.now() + timedelta(seconds=self.wait_s),
            "retry_after_s": self.wait_s,
            "requested": 1,
        }
        return dict(RateLimitExceededOutputSerializer(body).data)

    def rate(self) -> str:
        return str(settings.COURSEGEN_API_RATE)  # read per request: settings may change

    def wait(self) -> float:
        return float(self.wait_s)
