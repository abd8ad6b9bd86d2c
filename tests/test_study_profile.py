"""The study profile (`make study`): params-study.yaml, turned into `dvc exp run -S` overrides, is what DVC applies."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from msgfm.config import load_params

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("study_overrides", REPO / "scripts/study_overrides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts/study_overrides.py"), *args], cwd=cwd,
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_dvc_applies_the_overlay_exactly(tmp_path: Path) -> None:
    """The printed overrides, parsed by DVC's own --set-param code, give params.yaml merged with the overlay."""
    from dvc.utils.hydra import apply_overrides

    out = _run("params-study.yaml")
    assert out.returncode == 0, out.stderr
    args = out.stdout.split("\0")[:-1]
    assert args[0::2] == ["-S"] * (len(args) // 2)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", args[1::2])
    applied = yaml.safe_load((tmp_path / "params.yaml").read_text())
    base, overlay = (yaml.safe_load((REPO / name).read_text()) for name in ("params.yaml", "params-study.yaml"))
    assert applied == _script().merge(base, overlay) != base
    study = load_params(tmp_path / "params.yaml")
    assert study.finetune.seeds == [0, 1, 2] and study.pretrain.steps > load_params(REPO / "params.yaml").pretrain.steps
    places = [a.name for a in study.simulate.aois if a.name not in study.finetune.holdout_aois]
    assert len(places) == 7 and study.simulate.size_px == 384


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"finetune": {"seedz": [0, 1]}}, "finetune.seedz: not a key of params.yaml"),
        ({"simulate": {"size_px": 100}}, "multiple of 6"),
        ({"finetune": {"seeds": [0, 0]}}, "distinct offsets"),
    ],
)
def test_a_bad_overlay_stops_before_dvc_runs(tmp_path: Path, overlay: dict, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overlay))
    out = _run(str(tmp_path / "bad.yaml"))
    assert out.returncode == 1 and out.stdout == "" and message in out.stderr
