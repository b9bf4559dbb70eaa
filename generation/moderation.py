"""The moderation step's parts that need no conversation: what text is read, the call with
its transport retries (the one retry policy), and the feedback a flagged output is re-asked
with. generation/llm.py runs the step and keeps its ledger (docs/safety.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from generation.providers.base import (
    ModerationRequest,
    ModerationResult,
    PermanentProviderError,
    Provider,
    TransientProviderError,
)
from generation.retry import transport_retrying


def text_of(data: Any) -> str:
    """Every string in an output, one per line: what moderation reads."""
    if isinstance(data, str):
        return data
    values = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    return "\n".join(t for t in (text_of(v) for v in values) if t)


def moderation_call(
    moderator: Provider,
    request: ModerationRequest,
    *,
    before: Callable[[], None] = lambda: None,
    failed: Callable[[Exception, float], None] = lambda exc, latency_s: None,
) -> ModerationResult:
    """Call the moderation endpoint; transient errors are retried with back-off, each failed
    call reported to `failed` (with its latency) before the retry or the raise."""

    def once() -> ModerationResult:
        before()
        started = time.monotonic()
        try:
            return moderator.moderate(request)
        except (TransientProviderError, PermanentProviderError) as exc:
            failed(exc, time.monotonic() - started)
            raise

    return transport_retrying()(once)


def flagged_feedback(categories: tuple[str, ...]) -> str:
    return (
        f"Content moderation flagged this output as unsuitable for school students "
        f"({', '.join(categories)}). Rewrite it without such content."
    )
