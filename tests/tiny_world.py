"""A tiny simulated world run through every data stage, shared by the tests of later stages.

It runs the real stage commands (`msgfm simulate` ... `msgfm validate_pairs`) in-process in a
temporary project folder, with params small enough to take seconds: two AOIs of different biomes,
a few dates, 32 px chips.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml
from typer.testing import CliRunner

from msgfm.cli import app

DATA_STAGES = ("simulate", "download", "validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs")


def tiny_params(repo_root: Path) -> dict:
    """The repository's params.yaml shrunk to a world that runs through the data stages in seconds."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["simulate"].update(
        aois=[a for a in params["simulate"]["aois"] if a["name"] in ("farmland", "harbour")],
        size_px=120,
        fine_size_px=240,
        s2_dates=3,
        s1_dates=3,
    )
    params["pair"].update(chip_px=32, stride_px=32, block_m=600, max_days=120)
    params["model"].update(chip_px=32, mask_patch_px=8)
    params["pretrain"].update(
        steps=12, batch_size=8, warmup_steps=2, checkpoint_every=4, log_every=4, val_chips=8, preview_chips=1
    )
    return params


def whole_pipeline_params(repo_root: Path, until: str | None = None) -> dict:
    """tiny_params for every stage of dvc.yaml in minutes: 2 pretraining steps, one short trial per task.

    Used by the whole-retrain tests (tests/test_flows.py) and scripts/screenshot_prefect_ui.sh.
    """
    params = tiny_params(repo_root)
    params["simulate"]["until"] = until
    params["pretrain"].update(
        steps=2, workers=1, batch_size=8, warmup_steps=1, checkpoint_every=2, log_every=1, val_chips=4, preview_chips=1
    )
    params["ray"]["num_cpus"] = 1
    params["finetune"].update(
        variants=["pretrained"], label_fraction=1.0, trials=1, epochs=2, min_steps_per_epoch=4, batch_sizes=[8],
        lr_range=[0.002, 0.002], holdout_aois=[], train_until=None, threads=1, max_val_chips=8,
    )  # fmt: skip
    params["evaluate"]["examples"] = 1
    return params


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the block with `path` as the current directory (the stages use repo-relative paths)."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_stage(root: Path, stage: str, *args: str) -> str:
    """Run one stage command in-process in the project folder `root`; fail with its output if it fails."""
    with working_directory(root):
        result = CliRunner().invoke(app, [stage, "--params", "params.yaml", *args], catch_exceptions=False)
    assert result.exit_code == 0, f"msgfm {stage} failed:\n{result.output}"
    return result.output


def build_tiny_world(root: Path, repo_root: Path, params: dict | None = None) -> Path:
    """Write the tiny params into `root` and run every data stage there; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(repo_root), sort_keys=False))
    for stage in DATA_STAGES:
        run_stage(root, stage)
    return root
