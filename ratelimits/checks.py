"""System checks for rate-limit configuration."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.caches)
def check_throttle_cache(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    backend = str(settings.CACHES["default"]["BACKEND"])
    if settings.IS_POSTGRES and "redis" not in backend.lower():
        return [
            checks.Warning(
                f"the request throttle counts in {backend}, which each process keeps apart",
                hint="Set REDIS_URL so all web processes share one request budget per client.",
                id="ratelimits.W001",
            )
        ]
    return []
