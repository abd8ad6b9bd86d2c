"""Bootstrap intervals over independent spatial units, and the verdict a paired difference supports.

Chips are not independent: the dates of one chip position see the same place, and the positions of one
spatial block lie side by side. So a resample draws the *units* (positions or blocks) with replacement and
gives every chip of a drawn unit the unit's count as its weight. A statistic takes a weight matrix
`(resamples, chips)` and returns, per metric, one value per resample (`weights` of ones: the estimate
itself), so one sort or one matrix product serves all resamples at once (msgfm.evaluation.chipstats).

Several fine-tuning seeds: a model's estimate is the mean over its seeds, and a resample also draws the
seeds with replacement (a seed x unit bootstrap, `resample(..., seeds=K)`): its weights cover K copies of
the chips, copy k weighted by how often seed k was drawn, and `over_seeds` turns the K per-seed statistics
into one statistic of those weights, so intervals, comparisons and verdicts need nothing else.

A comparison of two models on the same chips uses the same resamples for both (a paired bootstrap); the
difference is taken as a gain (positive: the first is better, whatever the metric's direction), and
its percentile interval and the metric's minimum meaningful difference `min_effect` (params
`evaluate.min_effect`) give the verdict, with its reason: "held" when the whole interval is above zero and
the gain is at least `min_effect`; "no difference" when the two models score every chip alike (identical
predictions) or the whole interval lies within +-`min_effect`; "did not hold" when none of the interval is
above zero; "inconclusive" otherwise (an interval above zero whose gain is below `min_effect` but whose upper
end is not, a zero-width interval: the bootstrap saw no spread), and always with fewer than MIN_UNITS units.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["held", "did not hold", "no difference", "inconclusive"]
Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]
"""weights (resamples, chips) -> {metric: (resamples,) values}."""

MIN_UNITS = 2
"""Fewer independent units than this give no interval (NaN) and an inconclusive verdict."""


@dataclass(frozen=True)
class Resamples:
    """Bootstrap weights of the chips of one set: how often each chip's unit was drawn, per resample."""

    weights: np.ndarray
    """(resamples, seeds x chips): seed k's copy of the chips is columns k*chips to (k+1)*chips."""
    units: int
    confidence: float
    seeds: int = 1

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
    reason: str = ""
    """Why the verdict follows from the interval (and the minimum meaningful difference)."""
    min_effect: float = 0.0

    def record(self) -> dict[str, object]:
        """The JSON form: gain, its interval, the verdict, its reason and the minimum meaningful difference."""
        return {"metric": self.metric, "gain": _finite_or_none(self.gain.value), "ci": self.gain.bounds(),
                "verdict": self.verdict, "reason": self.reason, "min_effect": self.min_effect}  # fmt: skip


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def resample(
    units: Sequence[Hashable], n_resamples: int, seed: int, confidence: float = 0.95, seeds: int = 1
) -> Resamples:
    """Weights of `n_resamples` bootstrap draws of the distinct `units` (one entry per chip) and, with several
    fine-tuning `seeds`, of the seeds too (see the module docstring); seeded."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    _, inverse = np.unique(np.asarray([str(u) for u in units], dtype=object), return_inverse=True)
    n_units = int(inverse.max()) + 1 if len(inverse) else 0
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if n_units == 0:
        return Resamples(np.zeros((n_resamples, 0)), 0, confidence, seeds)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples)
    weights = counts[:, inverse].astype(np.float64)
    if seeds > 1:  # the seed draws come from their own stream: one seed's unit draws stay those of several
        drawn = np.random.default_rng([seed, seeds]).multinomial(seeds, np.full(seeds, 1.0 / seeds), n_resamples)
        weights = (drawn[:, :, None] * weights[:, None, :]).reshape(n_resamples, -1)
    return Resamples(weights, n_units, confidence, seeds)


def over_seeds(statistics: Sequence[Statistic]) -> Statistic:
    """The statistic of a model fine-tuned with K seeds (one statistic each, on the same chips): under the
    weights of `resample(..., seeds=K)`, the mean over the drawn seeds of each seed's value on the drawn units."""
    k = len(statistics)
    if k == 1:
        return statistics[0]

    def mean_over_seeds(weights: np.ndarray) -> dict[str, np.ndarray]:
        blocks = np.stack(np.split(weights, k, axis=1), axis=1)  # (resamples, seeds, chips)
        units = blocks.sum(1) / k  # seed counts sum to k: every copy is the unit weights times its count
        drawn = blocks.sum(2) / np.maximum(units.sum(1, keepdims=True), 1e-300)  # (resamples, seeds)
        cache: dict[int, dict[str, np.ndarray]] = {}  # a deterministic baseline repeats one statistic k times
        for s in statistics:
            if id(s) not in cache:
                cache[id(s)] = s(units)
        per = [cache[id(s)] for s in statistics]
        total = drawn.sum(1)
        return {m: sum(np.where(drawn[:, i] > 0, drawn[:, i] * per[i][m], 0.0) for i in range(k)) / total
                for m in per[0]}  # fmt: skip

    return mean_over_seeds


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
    return {name: _interval(value, boot[name], draws) for name, value in point.items()}


def _interval(point: np.ndarray, boot: np.ndarray, draws: Resamples) -> Interval:
    """The estimate (a 1-element array) with the percentile interval of its resampled values."""
    lo, hi = _percentiles(boot, draws.confidence) if draws.units >= MIN_UNITS else (np.nan, np.nan)
    return Interval(float(point[0]), lo, hi)


def verdict(gain: Interval, min_effect: float = 0.0, identical: bool = False) -> tuple[Verdict, str]:
    """The verdict a gain's interval supports, and why (rules: the module docstring); `identical`: the two
    models' per-chip scores are the same in every resample."""
    if identical:
        return "no difference", "identical per-chip scores: the two models predict the same"
    if not (np.isfinite(gain.lo) and np.isfinite(gain.hi)):
        return "inconclusive", f"no interval (fewer than {MIN_UNITS} independent units)"
    if gain.hi == gain.lo:
        return "inconclusive", "zero-width interval: the bootstrap saw no spread to judge the gain by"
    if -min_effect < gain.lo and gain.hi < min_effect:
        return "no difference", f"the whole interval lies within +-{min_effect:g}, the minimum meaningful difference"
    if gain.hi <= 0:
        return "did not hold", "no part of the interval is above zero"
    if gain.lo > 0 and gain.value < min_effect:  # above zero, but the interval straddles min_effect
        return "inconclusive", f"gain {gain.value:+.4g} is below the minimum meaningful difference {min_effect:g}"
    if gain.lo > 0:
        return "held", f"the interval is above zero and the gain is at least {min_effect:g}"
    return "inconclusive", "the interval contains zero"


def paired(
    first: Statistic,
    second: Statistic,
    draws: Resamples,
    metric: str,
    direction: Literal["max", "min"],
    min_effect: float = 0.0,
) -> Comparison:
    """The gain of `first` over `second` on `metric` (same chips, same resamples), its verdict and reason;
    `min_effect`: the smallest gain on `metric` that counts (params `evaluate.min_effect`)."""
    if min_effect < 0:
        raise ValueError(f"min_effect of {metric} must be >= 0, got {min_effect}")
    sign = 1.0 if direction == "max" else -1.0

    def gain(weights: np.ndarray) -> np.ndarray:
        return sign * (first(weights)[metric] - second(weights)[metric])

    point, boot = gain(np.ones((1, draws.chips))), gain(draws.weights)
    interval = _interval(point, boot, draws)
    identical = not (np.any(point) or np.any(boot))  # the same score on the full set and in every resample
    word, reason = verdict(interval, min_effect, identical)
    return Comparison(metric, interval, word, reason, min_effect)
