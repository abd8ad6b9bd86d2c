"""The bootstrap over spatial units (msgfm.evaluation.intervals) on data whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from msgfm.evaluation.intervals import Interval, intervals, over_seeds, paired, resample, verdict


def _mean_of(values: np.ndarray):
    """A statistic: the weighted mean of per-chip values."""

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        return {"MAE": weights @ values / weights.sum(1)}

    return statistic


def test_weights_draw_units_not_chips():
    units = ["a", "a", "a", "b", "c", "c"]
    draws = resample(units, 200, seed=0)
    assert draws.units == 3 and draws.weights.shape == (200, 6)
    w = draws.weights
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 4] == w[:, 5]).all()
    # every resample draws 3 units: the unit counts sum to 3
    assert (w[:, [0, 3, 4]].sum(1) == 3).all()
    assert not (w[:, 0] == w[:, 3]).all()


def test_one_unit_gives_no_interval_and_no_verdict():
    values = np.array([0.1, 0.2, 0.3])
    draws = resample(["x"] * 3, 100, seed=0)
    iv = intervals(_mean_of(values), draws)["MAE"]
    assert iv.value == pytest.approx(0.2) and np.isnan(iv.lo) and np.isnan(iv.hi)
    assert paired(_mean_of(values), _mean_of(values + 1), draws, "MAE", "min").verdict == "inconclusive"


def test_a_true_difference_holds_and_no_difference_is_inconclusive():
    rng = np.random.default_rng(1)
    units = np.repeat(np.arange(40), 3)  # 40 places, 3 dates each
    place = rng.normal(0.05, 0.02, 40)[units]  # what a place makes hard, shared by both models
    base = place + rng.normal(0, 0.01, len(units))
    better = base - 0.01 + rng.normal(0, 0.005, len(units))  # MAE: lower is better
    same = base + rng.normal(0, 0.005, len(units))
    draws = resample(units, 1000, seed=0)
    held = paired(_mean_of(better), _mean_of(base), draws, "MAE", "min")
    assert held.verdict == "held" and held.gain.value == pytest.approx(0.01, abs=0.003)
    assert paired(_mean_of(base), _mean_of(better), draws, "MAE", "min").verdict == "did not hold"
    assert paired(_mean_of(same), _mean_of(base), draws, "MAE", "min").verdict == "inconclusive"


def test_coverage_of_the_mean_is_about_95_percent():
    rng = np.random.default_rng(2)
    hits, runs = 0, 300
    for i in range(runs):
        units = np.repeat(np.arange(30), 4)
        values = rng.normal(1.0, 1.0, 30)[units] + rng.normal(0, 0.5, len(units))  # true mean 1.0
        iv = intervals(_mean_of(values), resample(units, 400, seed=i))["MAE"]
        hits += iv.lo <= 1.0 <= iv.hi
    assert 0.88 <= hits / runs <= 0.99


def test_clustered_chips_get_the_wider_interval_of_their_places():
    rng = np.random.default_rng(3)
    units = np.repeat(np.arange(10), 20)
    values = rng.normal(0, 1, 10)[units] + rng.normal(0, 0.1, len(units))
    by_place = intervals(_mean_of(values), resample(units, 1000, seed=0))["MAE"]
    by_chip = intervals(_mean_of(values), resample(np.arange(len(units)), 1000, seed=0))["MAE"]
    assert (by_place.hi - by_place.lo) > 3 * (by_chip.hi - by_chip.lo)


def test_verdict_follows_the_interval():
    assert verdict(Interval(0.2, 0.01, 0.3))[0] == "held"
    assert verdict(Interval(-0.2, -0.3, -0.01))[0] == "did not hold"
    assert verdict(Interval(0.1, -0.01, 0.3))[0] == "inconclusive"
    assert verdict(Interval(0.1, float("nan"), float("nan")))[0] == "inconclusive"


def test_a_zero_width_interval_or_a_negligible_gain_never_holds():
    """The pan-sharpening bug: variants scoring the same PSNR were "held" at +0.0000 [0.0000, 0.0000]."""
    word, reason = verdict(Interval(0.0, 0.0, 0.0), min_effect=0.1)
    assert word == "inconclusive" and "zero-width" in reason
    word, reason = verdict(Interval(1e-6, 1e-6, 1e-6))  # even with no minimum difference
    assert word == "inconclusive" and "zero-width" in reason
    word, reason = verdict(Interval(0.03, 0.01, 0.05), min_effect=0.1)  # excludes zero, but negligible
    assert word == "no difference" and "0.1" in reason
    assert verdict(Interval(0.3, 0.15, 0.6), min_effect=0.1)[0] == "held"
    assert verdict(Interval(0.05, 0.01, 0.6), min_effect=0.1)[0] == "inconclusive"  # gain below it, interval not
    assert verdict(Interval(-0.02, -0.05, 0.04), min_effect=0.1)[0] == "no difference"  # within +-0.1
    assert verdict(Interval(-0.02, -0.15, 0.04), min_effect=0.1)[0] == "inconclusive"
    with pytest.raises(ValueError, match="min_effect"):
        paired(_mean_of(np.ones(4)), _mean_of(np.ones(4)), resample(range(4), 10, seed=0), "MAE", "min", -1.0)


def test_identical_predictions_are_no_difference_and_a_clear_effect_holds():
    rng = np.random.default_rng(5)
    units = np.repeat(np.arange(30), 2)
    base = rng.normal(40.0, 2.0, 30)[units] + rng.normal(0, 0.3, len(units))  # per-chip PSNR, dB
    draws = resample(units, 1000, seed=0)
    same = paired(_mean_of(base), _mean_of(base.copy()), draws, "MAE", "max", min_effect=0.1)
    assert same.verdict == "no difference" and "identical" in same.reason
    assert same.gain.value == 0 and same.record()["reason"] == same.reason and same.record()["min_effect"] == 0.1
    clear = paired(_mean_of(base + 1.0 + rng.normal(0, 0.2, len(units))), _mean_of(base), draws, "MAE", "max", 0.1)
    assert clear.verdict == "held" and clear.gain.lo > 0.1 and clear.gain.value == pytest.approx(1.0, abs=0.1)
    tiny = paired(_mean_of(base + 0.02 + rng.normal(0, 0.01, len(units))), _mean_of(base), draws, "MAE", "max", 0.1)
    assert tiny.gain.lo > 0 and tiny.verdict == "no difference"  # certain, but below 0.1 dB


def test_seeds_average_and_their_spread_widens_the_interval():
    """Several fine-tuning seeds: the estimate is their mean; a seed x unit bootstrap carries the seed spread."""
    rng = np.random.default_rng(4)
    units = np.repeat(np.arange(40), 3)
    base = rng.normal(0.05, 0.01, 40)[units]
    seeds = [base + offset for offset in (-0.02, 0.0, 0.02)]  # seeds disagree much more than places do
    stats = [_mean_of(v) for v in seeds]
    draws = resample(units, 1000, seed=0, seeds=3)
    assert draws.weights.shape == (1000, 3 * len(units)) and draws.seeds == 3
    iv = intervals(over_seeds(stats), draws)["MAE"]
    assert iv.value == pytest.approx(np.mean([v.mean() for v in seeds]))
    units_only = intervals(_mean_of(np.mean(seeds, axis=0)), resample(units, 1000, seed=0))["MAE"]
    assert units_only.value == pytest.approx(iv.value)
    assert (iv.hi - iv.lo) > 3 * (units_only.hi - units_only.lo)  # a unit-only bootstrap hides the seed spread
    # one statistic repeated (a deterministic baseline) gives back its single-seed interval
    same = intervals(over_seeds([stats[1]] * 3), draws)["MAE"]
    single = intervals(stats[1], resample(units, 1000, seed=0))["MAE"]
    assert (same.value, same.lo, same.hi) == pytest.approx((single.value, single.lo, single.hi))
    # paired over seeds: seed k of one model against seed k of the other
    better = [_mean_of(v - 0.005) for v in seeds]
    assert paired(over_seeds(better), over_seeds(stats), draws, "MAE", "min").verdict == "held"
    with pytest.raises(ValueError, match="seeds must be"):
        resample(units, 10, seed=0, seeds=0)
