"""The coreg and pairs gates (real Great Expectations suites), and the chain on a tiny simulated world."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from affine import Affine
from coreg_world import CRS_UTM, RawWorld, copy_pipeline, pair_params, pipeline_root  # noqa: F401 (session fixture)
from typer.testing import CliRunner

from msgfm.chips.pairing import pair
from msgfm.chips.store import MANIFEST_HASH_KEY
from msgfm.cli import app
from msgfm.config import CoregisterParams, GatesParams
from msgfm.coreg.aoi_grids import read_grids
from msgfm.coreg.stage import coregister
from msgfm.datasets.tasks import TASK_SPECS
from msgfm.geo.grids import warp_to_grid
from msgfm.geo.io import sha256_file, write_cog
from msgfm.sensors import SENSORS
from msgfm.validation.coreg import validate_coreg
from msgfm.validation.gates import GateFailed
from msgfm.validation.pairs import validate_pairs


def _gate_coreg(root: Path, gates: GatesParams | None = None):
    return validate_coreg(
        root / "data/coreg",
        CoregisterParams(),
        gates or GatesParams(),
        gates_dir=root / "data/gates",
        reports_dir=root / "data/reports/gates",
    )


SPLIT_FINE = {"block_m": 160, "buffer_m": 0}
"""Blocks of one S2 chip: the world's 96 m fine region spans four, so RGB and DSM chips reach every split
(the shared pipeline's 480 m blocks put it in one block, all train)."""


@pytest.fixture(scope="module")
def paired_root(pipeline_root, tmp_path_factory) -> Path:  # noqa: F811
    """The shared pipeline re-paired with SPLIT_FINE: every sensor has train, val and test chips."""
    root = copy_pipeline(pipeline_root, tmp_path_factory.mktemp("paired"))
    shutil.rmtree(root / "data/chips")
    pair(pair_params(root, **SPLIT_FINE), coreg_dir=root / "data/coreg", coreg_gate=root / "data/gates/coreg.parquet")
    return root


def _gate_pairs(root: Path, gates: GatesParams | None = None):
    return validate_pairs(
        pair_params(root, **SPLIT_FINE),
        gates or GatesParams(),
        gates_dir=root / "data/gates",
        reports_dir=root / "data/reports/gates",
    )


def test_coreg_gate_accepts_the_corrected_world(pipeline_root):  # noqa: F811
    decisions = pd.read_parquet(pipeline_root / "data/gates/coreg.parquet")
    assert decisions["accepted"].all() and len(decisions) == 13
    report = json.loads((pipeline_root / "data/reports/gates/coreg.json").read_text())
    # the three S1 and the DSM, measured by ZNCC (peaks 0.62-0.63 and 0.43): all below 0.1 px
    assert report["success"] and report["residual_px"]["n"] == 4 and report["residual_px"]["not_measurable"] == 0
    assert report["residual_px"]["max"] < 0.1 < GatesParams().max_residual_px


def test_coreg_gate_rejects_off_grid_and_uncorrected_rasters(pipeline_root, tmp_path):  # noqa: F811
    """A raster moved off the AOI grid, and an S1 written without its correction, are quarantined; the rest pass."""
    root = copy_pipeline(pipeline_root, tmp_path)
    paths = pd.read_parquet(root / "data/coreg/rasters.parquet").set_index("id")["path"]
    off = root / "data/coreg" / paths["s1_farm_20240514"]
    with rasterio.open(off) as src:
        data, transform = src.read(), src.transform
    write_cog(off, data, crs=CRS_UTM, transform=transform @ Affine.translation(0.5, 0.0))
    grid = read_grids(root / "data/coreg", "farm")["s10"]
    with (
        rasterio.open(root / "data/raw/s1/s1_farm_20240502/VV.tif") as vv,
        rasterio.open(root / "data/raw/s1/s1_farm_20240502/VH.tif") as vh,
    ):
        data = np.concatenate([warp_to_grid(vv, grid, dtype="float32"), warp_to_grid(vh, grid, dtype="float32")])
    write_cog(root / "data/coreg" / paths["s1_farm_20240502"], data, crs=grid.crs, transform=grid.transform)
    result = _gate_coreg(root)
    decisions = result.decisions.set_index("id")
    assert "not on the AOI's s10 grid" in decisions.loc["s1_farm_20240514", "reasons"]
    assert "residual misregistration" in decisions.loc["s1_farm_20240502", "reasons"]
    assert decisions["accepted"].sum() == 11 and result.passed  # 11/13 >= min_pass_rate 0.8
    report = json.loads((root / "data/reports/gates/coreg.json").read_text())
    assert report["failures_by_expectation"]["on_reference_grid"] == 1
    assert report["failures_by_expectation"]["residual_small"] == 1
    strict = _gate_coreg(root, GatesParams(min_pass_rate=0.95))
    with pytest.raises(GateFailed, match="below gates.min_pass_rate"):
        strict.raise_if_failed()


def test_coreg_gate_quarantines_stage_failures_with_their_reason(tmp_path):
    world = RawWorld(tmp_path, size=48, fine_size=48)
    world.add_s2("2024-05-01")
    world.add_s1("2024-05-02", (0.5, -0.5))
    far = world.add_s1("2024-05-03", (0.0, 0.0), far_away=True)
    world.finish()
    coregister(
        CoregisterParams(),
        ledger=tmp_path / "data/raw/acquisitions.parquet",
        raw_gate=tmp_path / "data/gates/raw.parquet",
        raw_dir=tmp_path / "data/raw",
        out_dir=tmp_path / "data/coreg",
        report=tmp_path / "data/reports/coregister.json",
    )
    decisions = _gate_coreg(tmp_path, GatesParams(min_pass_rate=0.5)).decisions.set_index("id")
    assert not decisions.loc[far, "accepted"]
    assert decisions.loc[far, "reasons"].startswith("coregister: footprint does not overlap")
    assert decisions.drop(index=far)["accepted"].all()


def test_pairs_gate_accepts_the_manifest(paired_root, tmp_path):  # noqa: F811
    root = copy_pipeline(paired_root, tmp_path)
    result = _gate_pairs(root)
    assert result.passed, result.message
    report = json.loads((root / "data/reports/gates/pairs.json").read_text())
    assert report["dataset_checks"] == {
        "schema": True, "unique_ids": True, "splits_complete": True, "splits_disjoint": True, "train_has_classes": True,
        "paired_fraction": True,
    }  # fmt: skip
    assert set(report["chips_by_split"]) == {"train", "val", "test"} and report["paired_fraction"] > 0.3


def test_pairs_gate_catches_leaky_splits_bad_stats_and_few_pairs(paired_root, tmp_path):  # noqa: F811
    root = copy_pipeline(paired_root, tmp_path)
    path = root / "data/manifest.parquet"
    manifest = pd.read_parquet(path)
    train = manifest.index[(manifest["split"] == "train") & (manifest["sensor"] == "s2")]
    manifest.loc[train[0], "split"] = "test"  # a test chip amid train chips
    manifest.loc[train[1], "mean"] = np.nan
    manifest.loc[train[2], "store_index"] = 10_000
    manifest.to_parquet(path)
    index = json.loads((root / "data/chips/index.json").read_text())  # as if pair had written this manifest
    (root / "data/chips/index.json").write_text(json.dumps({**index, MANIFEST_HASH_KEY: sha256_file(path)}))
    result = _gate_pairs(root)
    assert not result.passed and "splits_disjoint" in result.failed_dataset_checks
    decisions = result.decisions.set_index("id")
    assert "intersects train chips" in decisions.loc[manifest.loc[train[0], "id"], "reasons"]
    assert "non-finite chip statistics" in decisions.loc[manifest.loc[train[1], "id"], "reasons"]
    assert "store_index outside the store" in decisions.loc[manifest.loc[train[2], "id"], "reasons"]
    few = _gate_pairs(copy_pipeline(paired_root, tmp_path / "b"), GatesParams(min_paired_fraction=0.99))
    assert few.failed_dataset_checks == ["paired_fraction"]


def _write_manifest(root: Path, manifest: pd.DataFrame) -> None:
    """Replace the manifest, as if pair had written it with the chip store."""
    path = root / "data/manifest.parquet"
    manifest.to_parquet(path)
    index = json.loads((root / "data/chips/index.json").read_text())
    (root / "data/chips/index.json").write_text(json.dumps({**index, MANIFEST_HASH_KEY: sha256_file(path)}))


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ({"split": "val"}, ["no val chips of dsm", "no val chips of rgb", "no val chips of s1", "no val chips of s2"]),
        ({"split": "test", "sensor": "s1"}, ["no test chips of s1"]),
        ({"split": "train", "sensor": "dsm"}, ["no train chips of dsm"]),
    ],
)
def test_pairs_gate_fails_a_manifest_without_chips_of_a_split_for_a_sensor(paired_root, tmp_path, drop, named):  # noqa: F811
    """No val chips (or no test S1, no train DSM): training would start and fail later; the gate stops it first,
    naming each split and sensor that has no chips."""
    root = copy_pipeline(paired_root, tmp_path)
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    assert {(sp, se) for sp in ("train", "val", "test") for se in ("s1", "s2", "rgb", "dsm")} <= set(
        zip(manifest["split"], manifest["sensor"], strict=True)
    )  # the world's manifest is complete: each case below removes exactly what it names
    gone = np.logical_and.reduce([manifest[k] == v for k, v in drop.items()])
    _write_manifest(root, manifest[~gone])
    result = _gate_pairs(root)
    assert not result.passed and "splits_complete" in result.failed_dataset_checks
    assert f"'splits_complete' failed: {', '.join(named)}: pretraining and fine-tuning" in result.message
    report = json.loads((root / "data/reports/gates/pairs.json").read_text())
    assert report["splits_missing"] == [n.removeprefix("no ").replace(" chips of ", "/") for n in named]
    assert report["dataset_checks"]["splits_complete"] is False


def test_pairs_gate_refuses_a_corpus_whose_rgb_and_dsm_are_all_train(pipeline_root, tmp_path):  # noqa: F811
    """The shared pipeline as pair cut it: the 96 m fine region lies in one 480 m block, a train block, so
    segmentation could neither tune (val) nor be scored (test); the gate says so before training starts."""
    root = copy_pipeline(pipeline_root, tmp_path)
    result = validate_pairs(
        pair_params(root), GatesParams(), gates_dir=root / "data/gates", reports_dir=root / "data/reports/gates"
    )
    assert not result.passed and result.failed_dataset_checks == ["splits_complete"]
    assert "no val chips of dsm, no test chips of dsm, no val chips of rgb, no test chips of rgb" in result.message
    with pytest.raises(GateFailed, match="no val chips of dsm"):
        result.raise_if_failed()


def test_the_fine_tuning_tasks_together_read_every_sensor():
    """Why splits_complete asks every sensor of the manifest for every split (msgfm/validation/pairs.py)."""
    assert {s for spec in TASK_SPECS.values() for s in spec.inputs} == set(SENSORS)


def test_pairs_gate_does_not_require_a_sensor_the_manifest_lacks(paired_root, tmp_path):  # noqa: F811
    """An S1/S2-only corpus (no RGB or DSM at all) has every split of the sensors it has: complete."""
    root = copy_pipeline(paired_root, tmp_path)
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    _write_manifest(root, manifest[manifest["sensor"].isin(["s1", "s2"])])
    result = _gate_pairs(root)
    assert result.report["dataset_checks"]["splits_complete"] is True and result.report["splits_missing"] == []


def test_pairs_gate_reports_classes_absent_from_train_and_keeps_their_chips(paired_root, tmp_path):  # noqa: F811
    """A class seen only in val/test is listed with its chips per split, not a gate failure (issue 15 item 5)."""
    root = copy_pipeline(paired_root, tmp_path)
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    train = manifest["split"] == "train"
    held_classes = set().union(*manifest.loc[~train, "labels"].map(set))
    code = max(held_classes)
    manifest.loc[train, "labels"] = manifest.loc[train, "labels"].map(lambda x: [c for c in x if c != code])
    _write_manifest(root, manifest)
    result = _gate_pairs(root)
    assert result.passed, result.message  # the old `classes_in_train` check failed the gate here
    report = json.loads((root / "data/reports/gates/pairs.json").read_text())
    expected = manifest.loc[manifest["labels"].map(lambda x: code in x), "split"].value_counts().to_dict()
    assert report["classes_absent_from_train"] == {str(code): expected}
    assert set(expected) <= {"val", "test"} and sum(expected.values()) > 0
    assert result.decisions.set_index("id").loc[manifest.loc[~train, "id"], "accepted"].all()


def test_pairs_gate_fails_when_train_has_no_class_at_all(paired_root, tmp_path):  # noqa: F811
    """Train chips without any class: fine-tuning would learn none, so the gate fails."""
    root = copy_pipeline(paired_root, tmp_path)
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    train = manifest["split"] == "train"
    manifest.loc[train, "labels"] = manifest.loc[train, "labels"].map(lambda x: [])
    _write_manifest(root, manifest)
    result = _gate_pairs(root)
    assert not result.passed and result.failed_dataset_checks == ["train_has_classes"]
    assert "no train chip has a land-cover class" in result.message


def _tiny_world_params(path: Path, repo_root: Path) -> None:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["simulate"].update(
        aois=[{"name": "farmland", "biome": "temperate_farmland", "lon": 11.4, "lat": 48.2}],
        size_px=96, fine_size_px=256, s2_dates=4, s1_dates=4, rgb_dates=1, dsm_dates=1,
    )  # fmt: skip
    params["pair"].update(chip_px=32, stride_px=32, block_m=480, max_days=30, val_fraction=0.25, test_fraction=0.25)
    params["model"]["chip_px"] = 32  # the encoder is built for the chips pair cuts
    params["gates"]["min_paired_fraction"] = 0.3
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_simulated_world_end_to_end(tmp_path, repo_root, monkeypatch):
    """simulate -> download -> validate_raw -> coregister -> validate_coreg -> pair -> validate_pairs via the CLI."""
    _tiny_world_params(tmp_path / "params.yaml", repo_root)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in ("simulate", "download", "validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs"):
        out = runner.invoke(app, [command, "--params", "params.yaml"])
        assert out.exit_code == 0, f"{command}: {out.output}"
    report = json.loads(Path("data/reports/coregister.json").read_text())
    assert report["scored_rasters"] == 5 and report["median_abs_error_px"] < 0.25  # 4 S1 + 1 DSM vs the truth
    truth = json.loads(Path("data/source/truth/farmland.json").read_text())["shifts"]
    rasters = pd.read_parquet("data/coreg/rasters.parquet").set_index("id")
    for item_id, t in truth.items():  # the sidecar's correction is the negated content shift we estimate
        assert abs(rasters.loc[item_id, "shift_dx_px"] + t["dx_px"]) < 0.5
        assert abs(rasters.loc[item_id, "shift_dy_px"] + t["dy_px"]) < 0.5
    manifest = pd.read_parquet("data/manifest.parquet")
    assert set(manifest["sensor"]) == {"s1", "s2", "rgb", "dsm"} and manifest["paired"].any()
    assert json.loads(Path("data/reports/gates/pairs.json").read_text())["success"]


def test_pairs_gate_on_an_s2_only_corpus_reports_the_paired_share_as_not_applicable(paired_root, tmp_path):  # noqa: F811
    """No S1 or RGB chip: the paired share is a mean over nothing; the gate reports it as not applicable with the
    reason (no NaN, no numpy warning) and does not fail on it."""
    root = copy_pipeline(paired_root, tmp_path)
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    s2 = manifest[manifest["sensor"] == "s2"].assign(partner_id=None, partner_sensor=None, partner_index=-1)
    _write_manifest(root, s2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "Mean of empty slice" would be an error here
        result = _gate_pairs(root)
    report = json.loads((root / "data/reports/gates/pairs.json").read_text())
    assert report["paired_fraction"] is None
    assert report["paired_fraction_not_applicable"].startswith("no S1 or RGB chips in the manifest")
    assert "paired_fraction" not in report["dataset_checks"] and "paired_fraction" not in result.failed_dataset_checks
    assert result.passed, result.message
    assert report["chips_by_sensor"] == {"s2": len(s2)}
