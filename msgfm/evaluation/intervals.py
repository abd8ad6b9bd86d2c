"""Bootstrap intervals over independent spatial units, and the verdict a paired difference supports.

Chips are not independent: the dates of one chip position see the same place, and the positions of one
spatial block lie side by side. So a resample draws the *units* (positions or blocks) with replacement and
gives every chip of a drawn unit the unit's count as its weight. A statistic takes a weight matrix
`(resamples, chips)` and returns, per metric, one value per resample (`weights` of ones: the estimate
itself), so one sort or one matrix product serves all resamples at once (msgfm.evaluation.chipstats).

A comparison of two models on the same chips uses the same resamples for both (a paired bootstrap); the
difference is taken as a gain (positive: the first is better, whatever the metric's direction), and
its percentile interval gives the verdict: "held" when the whole interval is above zero, "did not hold"
when none of it is, "inconclusive" otherwise (and always with fewer than MIN_UNITS units).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["held", "did not hold", "inconclusive"]
Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]
"""weights (resamples, chips) -> {metric: (resamples,) values}."""

MIN_UNITS = 2
"""Fewer independent units than this give no interval (NaN) and an inconclusive verdict."""


@dataclass(frozen=True)
class Resamples:
    """Bootstrap weights of the chips of one set: how often each chip's unit was drawn, per resample."""

    weights: np.ndarray
    units: int
    confidence: float

    @property
    def chips(self) -> int:
        return int(self.weights.shape[1])


@dataclass(frozen=True)
class Interval:
    """An estimate and its percentile bootstrap interval (NaN bounds when there are too few units)."""

    value: float
    lo: float
    hi: float

    def bounds(self) -> list[float | None]:
        """[lo, hi] for JSON (None for NaN)."""
        return [_finite_or_none(self.lo), _finite_or_none(self.hi)]


@dataclass(frozen=True)
class Comparison:
    """A paired difference as a gain (positive: the first model is better), its interval and verdict."""

    metric: str
    gain: Interval
    verdict: Verdict

    def record(self) -> dict[str, object]:
        """The JSON form: gain, its interval and the verdict."""
        return {"metric": self.metric, "gain": _finite_or_none(self.gain.value), "ci": self.gain.bounds(),
                "verdict": self.verdict}  # fmt: skip


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def resample(units: Sequence[Hashable], n_resamples: int, seed: int, confidence: float = 0.95) -> Resamples:
    """Weights of `n_resamples` bootstrap draws of the distinct `units` (one entry per chip), seeded."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    _, inverse = np.unique(np.asarray([str(u) for u in units], dtype=object), return_inverse=True)
    n_units = int(inverse.max()) + 1 if len(inverse) else 0
    if n_units == 0:
        return Resamples(np.zeros((n_resamples, 0)), 0, confidence)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples)
    return Resamples(counts[:, inverse].astype(np.float64), n_units, confidence)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def intervals(statistic: Statistic, draws: Resamples) -> dict[str, Interval]:
    """Estimate and interval of every metric the statistic returns."""
    point = statistic(np.ones((1, draws.chips)))
    boot = statistic(draws.weights)
    out = {}
    for name, value in point.items():
        lo, hi = _percentiles(boot[name], draws.confidence) if draws.units >= MIN_UNITS else (np.nan, np.nan)
        out[name] = Interval(float(value[0]), lo, hi)
    return out


def verdict(gain: Interval) -> Verdict:
    """held: the gain's interval lies above zero; did not hold: none of it does; else inconclusive."""
    if not (np.isfinite(gain.lo) and np.isfinite(gain.hi)):
        return "inconclusive"
    if gain.lo > 0:
        return "held"
    if gain.hi <= 0:
        return "did not hold"
    return "inconclusive"


def paired(
    first: Statistic, second: Statistic, draws: Resamples, metric: str, direction: Literal["max", "min"]
) -> Comparison:
    """The gain of `first` over `second` on `metric` (same chips, same resamples) and its verdict."""
    sign = 1.0 if direction == "max" else -1.0

    def gain(weights: np.ndarray) -> dict[str, np.ndarray]:
        return {metric: sign * (first(weights)[metric] - second(weights)[metric])}

    interval = intervals(gain, draws)[metric]
    return Comparison(metric, interval, verdict(interval))
