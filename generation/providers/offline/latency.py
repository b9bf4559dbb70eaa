"""The latency model: a per-tier time to first token plus output tokens at a per-tier rate."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from generation.schemas import Tier


@dataclass(frozen=True)
class TierLatency:
    """How long a simulated call takes on one tier, before `latency_scale` is applied."""

    time_to_first_token_s: float
    output_tokens_per_s: float

    def seconds(self, output_tokens: int) -> float:
        return self.time_to_first_token_s + output_tokens / self.output_tokens_per_s


DEFAULT_LATENCY: Mapping[Tier, TierLatency] = {
    Tier.COMPLEX: TierLatency(time_to_first_token_s=0.5, output_tokens_per_s=80.0),
    Tier.SIMPLE: TierLatency(time_to_first_token_s=0.3, output_tokens_per_s=150.0),
}


def wait(modelled_s: float, *, scale: float, started: float) -> float:
    """Sleep the scaled modelled time; return the measured latency of the whole call."""
    delay = modelled_s * scale
    if delay > 0:
        time.sleep(delay)
    return time.perf_counter() - started
