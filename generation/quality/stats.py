"""Means with bootstrap confidence intervals (percentile method), deterministic for a seed.

Each A/B metric is a mean over courses; its 95% interval comes from resampling the courses with
replacement. Bootstrap rather than Welch's t: the metrics are bounded, skewed and often discrete
(1-5 scores, failure shares near 0), where a normal approximation misleads on small samples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float | None
    low: float | None
    high: float | None
    n: int

    def above(self, other: Interval) -> bool:
        """This interval lies entirely above the other (both estimated)."""
        return (
            self.low is not None
            and other.high is not None
            and self.n > 1
            and other.n > 1
            and self.low > other.high
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


EMPTY = Interval(None, None, None, 0)


def bootstrap_mean(
    values: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL
) -> Interval:
    """The mean of `values` and its bootstrap percentile interval."""
    n = len(values)
    if n == 0:
        return EMPTY
    mean = sum(values) / n
    if n == 1 or min(values) == max(values):
        return Interval(mean, mean, mean, n)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[int(tail * resamples)]
    high = means[min(resamples - 1, int((1 - tail) * resamples))]
    return Interval(mean, low, high, n)
