"""Intervals for the numbers a report shows, so a reader can tell a finding from noise.

- An accuracy over n pairs is a binomial proportion: its 95% Wilson score interval (it stays inside
  [0, 1] and is not degenerate at 0 or n of n, unlike the normal approximation).
- A metric over repetitions (seeds): the mean, the sample standard deviation and the Student-t
  interval of the mean.
- A paired comparison: the per-repetition difference of two settings that share data and seed, and
  the t-interval of its mean (pairing removes the variance the two settings share).

scipy computes the quantiles; it is imported when an interval is asked for (reports stay fast).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A value with its interval; `low`/`high` are nan where one value gives no interval."""

    value: float
    low: float
    high: float
    n: int
    std: float = math.nan

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if math.isnan(self.low):
            return f"{self.value:.3f} (n={self.n}, no interval)"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def accuracy_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """The Wilson score interval of `correct` successes out of `n` pairs (e.g. 8 of 10: 0.8 [0.490, 0.943])."""
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError(f"an accuracy needs at least one pair, got n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be between 0 and n={n}, got {correct}")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(correct / n, float(ci.low), float(ci.high), int(n))


def accuracy_from_rate(accuracy: float, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """`accuracy_interval` of an accuracy reported as a fraction of `n` pairs (a tie counts half in
    some metrics: the count is rounded to the nearest pair)."""
    return accuracy_interval(round(accuracy * n), n, confidence)


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std and the t-interval of the mean of repeated measurements (e.g. one per seed)."""
    from scipy.stats import t

    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values to average")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, std)


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], confidence: float = CONFIDENCE) -> Estimate:
    """The mean of a[k] - b[k] over the keys both have (k: a repetition, i.e. the same data and seed)
    and its t-interval. Keys only one side has are ignored; none in common is an error."""
    shared = [k for k in a if k in b]
    if not shared:
        raise ValueError("the two settings share no repetition to pair")
    return mean_interval((a[k] - b[k] for k in shared), confidence)
