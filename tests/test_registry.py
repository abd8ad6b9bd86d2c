"""The champion/challenger gate on hand-made metrics tables, and the registry file it keeps.

CHAMPION's cloud_removal has no primary metric (MAE), so every metric of it is gated by the tolerance;
classification and segmentation are gated on their primary metric (mAP_micro, mIoU) alone.
"""

from __future__ import annotations

import json

import pytest

from msgfm.registry import RegistryError, compare, gain_interval, load_registry, metric_direction, record_decision

CHAMPION = {
    "classification": {"mAP_micro": 0.80, "f1": 0.70},
    "cloud_removal": {"psnr": 30.0, "sam": 5.0},
    "segmentation": {"mIoU": 0.60},
}


def _with(task: str, metric: str, value: float) -> dict:
    metrics = json.loads(json.dumps(CHAMPION))
    metrics[task][metric] = value
    return metrics


def test_directions_resolve_by_name_and_prefix():
    assert metric_direction("mAP_micro") == "max"
    assert metric_direction("f1@macro") == "max"
    assert metric_direction("iou_water") == "max"
    assert metric_direction("SAM") == "min"
    assert metric_direction("ergas") == "min"
    with pytest.raises(RegistryError, match="unknown direction"):
        metric_direction("wobble")


def test_first_model_becomes_champion():
    decision = compare(None, CHAMPION, tolerance=0.02)
    assert decision.promote and "no champion yet" in decision.reason
    assert len(decision.rows) == 5


def test_within_tolerance_on_every_metric_is_promoted():
    # 1% worse PSNR (higher is better) and 1% worse SAM (lower is better): inside a 2% tolerance
    challenger = _with("cloud_removal", "psnr", 29.7)
    challenger["cloud_removal"]["sam"] = 5.05
    decision = compare(CHAMPION, challenger, tolerance=0.02)
    assert decision.promote, decision.reason
    row = next(r for r in decision.rows if r.metric == "sam")
    assert row.relative_change == pytest.approx(-0.01)


@pytest.mark.parametrize(("task", "metric", "value"), [("segmentation", "mIoU", 0.58), ("cloud_removal", "sam", 5.2)])
def test_worse_beyond_tolerance_on_one_gated_metric_is_not_promoted(task, metric, value):
    challenger = _with(task, metric, value)
    challenger["classification"]["mAP_micro"] = 0.95  # much better elsewhere does not compensate
    decision = compare(CHAMPION, challenger, tolerance=0.02)
    assert not decision.promote
    assert f"{task}.{metric}" in decision.reason and "no interval" in decision.reason
    assert [r.metric for r in decision.rows if not r.acceptable] == [metric]


def test_only_the_primary_metric_is_gated_where_the_champion_has_one():
    decision = compare(CHAMPION, _with("classification", "f1", 0.3), tolerance=0.02)
    assert decision.promote, decision.reason
    row = next(r for r in decision.rows if r.metric == "f1")
    assert not row.gated and row.acceptable and row.relative_change == pytest.approx(-4 / 7)


def _ci(metrics: dict, task: str, metric: str, lo: float, hi: float) -> dict:
    metrics[task]["ci"] = {metric: [lo, hi]}
    metrics[task]["n"] = {"chips": 84, "positions": 30, "blocks": 2, "unit": "position"}
    return metrics


def test_gain_interval_adds_half_widths_in_quadrature():
    # higher is better: challenger 0.57 [0.52, 0.62], champion 0.60 [0.55, 0.65]
    lo, hi = gain_interval("max", 0.60, 0.57, (0.55, 0.65), (0.52, 0.62))
    assert (lo, hi) == pytest.approx((-0.03 - 0.05 * 2**0.5, -0.03 + 0.05 * 2**0.5))
    # lower is better (MAE): challenger 0.05 [0.04, 0.07] vs champion 0.06 [0.055, 0.062]: gain +0.01
    lo, hi = gain_interval("min", 0.06, 0.05, (0.055, 0.062), (0.04, 0.07))
    assert lo == pytest.approx(0.01 - (0.02**2 + 0.005**2) ** 0.5)
    assert hi == pytest.approx(0.01 + (0.01**2 + 0.002**2) ** 0.5)


def test_worse_within_the_interval_is_promoted_and_beyond_it_is_not(tmp_path):
    champion = _ci(json.loads(json.dumps(CHAMPION)), "segmentation", "mIoU", 0.55, 0.65)
    noisy = _ci(_with("segmentation", "mIoU", 0.57), "segmentation", "mIoU", 0.52, 0.62)  # 5 % worse: noise here
    decision = compare(champion, noisy, tolerance=0.02)
    assert decision.promote, decision.reason
    row = next(r for r in decision.rows if r.metric == "mIoU")
    assert row.gain_ci[0] < 0 < row.gain_ci[1] and row.champion_ci == (0.55, 0.65)
    lo, hi = row.gain_ci  # a promotion cites the interval it was decided on, too
    assert f"segmentation.mIoU gain [{lo:+.4g}, {hi:+.4g}]" in decision.reason
    worse = _ci(_with("segmentation", "mIoU", 0.40), "segmentation", "mIoU", 0.38, 0.42)
    decision = compare(champion, worse, tolerance=0.5)  # the interval decides, not the tolerance
    assert not decision.promote and "segmentation.mIoU (worse beyond the interval: gain [" in decision.reason
    path = tmp_path / "registry.json"
    record_decision(path, compare(None, champion, 0.02), champion, "m1", "aa" * 32)
    record_decision(path, decision, worse, "m2", "bb" * 32)
    entry = load_registry(path)["history"][-1]
    cited = next(r for r in entry["comparison"] if r["metric"] == "mIoU")
    assert cited["gain_ci"][1] < 0 and cited["challenger_ci"] == [0.38, 0.42] and cited["champion_ci"] == [0.55, 0.65]
    assert "| segmentation | mIoU | higher | 0.6 [0.55, 0.65] | 0.4 [0.38, 0.42] |" in decision.to_markdown()


def test_classes_absent_from_train_are_evidence_not_a_metric():
    """evaluate.json entries list `absent_from_train` (issue 15 item 5); the gate reads past it."""
    champion = _ci(json.loads(json.dumps(CHAMPION)), "segmentation", "mIoU", 0.55, 0.65)
    challenger = json.loads(json.dumps(champion))
    for table in (champion, challenger):
        table["segmentation"]["absent_from_train"] = {"70": {"class": "snow", "pixels": 120, "share": 0.01}}
    decision = compare(champion, challenger, tolerance=0.02)
    assert decision.promote, decision.reason
    assert {r.metric for r in decision.rows if r.task == "segmentation"} == {"mIoU"}


def test_missing_task_blocks_promotion_and_bad_values_are_errors():
    challenger = {k: v for k, v in CHAMPION.items() if k != "segmentation"}
    decision = compare(CHAMPION, challenger, tolerance=0.5)
    assert not decision.promote and "segmentation.mIoU (missing)" in decision.reason
    with pytest.raises(RegistryError, match=r"segmentation.mIoU is not a finite number"):
        compare(CHAMPION, _with("segmentation", "mIoU", float("nan")), tolerance=0.02)
    with pytest.raises(RegistryError, match="tolerance"):
        compare(CHAMPION, CHAMPION, tolerance=-0.1)


def test_markdown_table_lists_every_metric():
    decision = compare(CHAMPION, _with("segmentation", "mIoU", 0.3), tolerance=0.02)
    md = decision.to_markdown()
    assert "**not promoted**" in md
    assert "| segmentation | mIoU | higher | 0.6 | 0.3 | -50.00% |  | yes | no (50.00% worse, no interval) |" in md
    assert md.count("\n| ") == 1 + 5  # header + one row per metric


def test_registry_keeps_champion_and_history(tmp_path):
    path = tmp_path / "models" / "registry.json"
    assert load_registry(path) == {"champion": None, "history": []}
    record_decision(path, compare(None, CHAMPION, 0.02), CHAMPION, "m1", "aa" * 32, run_id="r1")
    worse = _with("segmentation", "mIoU", 0.3)
    champion_metrics = load_registry(path)["champion"]["metrics"]
    record_decision(path, compare(champion_metrics, worse, 0.02), worse, "m2", "bb" * 32, run_id="r2")
    registry = json.loads(path.read_text())
    assert registry["champion"]["model_id"] == "m1"
    assert registry["champion"]["dvc_lock_sha256"] == "aa" * 32
    assert [(h["model_id"], h["promoted"]) for h in registry["history"]] == [("m1", True), ("m2", False)]
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable model registry"):
        load_registry(path)
