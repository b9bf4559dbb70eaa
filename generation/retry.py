"""The one retry policy for transport errors (429, 5xx, timeouts, connection errors).

Exponential backoff with full jitter, never sooner than the provider's Retry-After, a bounded
number of attempts. Permanent errors are not retried. Invalid output is not a transport error:
it is re-asked by generation/llm.py. The openai SDK's own retries are off (OPENAI_MAX_RETRIES=0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from generation.providers.base import TransientProviderError

logger = logging.getLogger("coursegen.retry")
T = TypeVar("T")


class BackoffWait:
    """Full-jitter exponential wait, raised to the provider's Retry-After when it names one."""

    def __init__(self, *, base_s: float, max_s: float):
        self._jitter = wait_random_exponential(multiplier=base_s, max=max_s)

    def __call__(self, state: RetryCallState) -> float:
        wait = float(self._jitter(state))
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return max(wait, float(retry_after)) if retry_after else wait


def transport_retrying(
    *, max_attempts: int | None = None, sleep: Callable[[float], None] = time.sleep
) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(TransientProviderError),
        stop=stop_after_attempt(max_attempts or settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS),
        wait=BackoffWait(
            base_s=settings.COURSEGEN_TRANSIENT_BASE_WAIT_S,
            max_s=settings.COURSEGEN_TRANSIENT_MAX_WAIT_S,
        ),
        sleep=sleep,
        reraise=True,
        before_sleep=_log_retry,
    )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0
    logger.warning(
        "transient provider error (attempt %s), retrying in %.2fs: %s",
        state.attempt_number,
        wait,
        exc,
    )


def call_with_retry(fn: Callable[[], T], **kwargs: object) -> T:
    return transport_retrying(**kwargs)(fn)  # type: ignore[arg-type]
