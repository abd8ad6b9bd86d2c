"""Bit-reproducibility of the data stages (docs/reproducibility.md): the same params give the same bytes.

The simulated world is checked across CPU instruction sets (numpy picks its SIMD loops by CPU; with AVX-512
switched off it runs the loops an AVX2-only machine runs), the data stages across two runs of the tiny world.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from dvc_repo import REPO_ROOT
from tiny_world import build_tiny_world, tiny_params

from msgfm.geo.io import sha256_file

# numpy's AVX-512 dispatch targets (numpy 2.4); switching them off leaves an AVX2 machine's loops
AVX512 = ("X86_V4", "AVX512_ICL", "AVX512_SPR")


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root/data, by repository-relative path."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted((root / "data").rglob("*")) if p.is_file()}


def _simulate(root: Path, env: dict[str, str]) -> dict[str, str]:
    """Run `msgfm simulate` in a fresh interpreter in `root` (a one-AOI tiny world); its files' digests."""
    params = tiny_params(REPO_ROOT)
    params["simulate"]["aois"] = params["simulate"]["aois"][:1]
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", "msgfm.cli", "simulate", "--params", "params.yaml"]
    done = subprocess.run(cmd, cwd=root, env=env | {"PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return _digests(root)


def test_simulated_world_has_the_same_bytes_with_and_without_avx512(tmp_path):
    from numpy._core._multiarray_umath import __cpu_dispatch__

    assert set(AVX512) <= set(__cpu_dispatch__), f"numpy {np.__version__} renamed its dispatch targets"
    native = _simulate(tmp_path / "native", dict(os.environ))
    avx2 = _simulate(tmp_path / "avx2", os.environ | {"NPY_DISABLE_CPU_FEATURES": " ".join(AVX512)})
    assert any("/sentinel-1-grd/" in path and path.endswith("VV.tif") for path in native)
    assert native == avx2


def test_data_stages_repeat_bit_for_bit(tiny_world, tmp_path):
    """A second run of the data stages writes the same bytes, but for coregister's run time in its report."""
    again = build_tiny_world(tmp_path / "again", REPO_ROOT)
    first, second = _digests(tiny_world), _digests(again)
    assert first.keys() == second.keys()
    differing = {path for path in first if first[path] != second[path]}
    # the resume records key on their inputs' contents (not paths or mtimes); coregister.json holds `seconds`
    assert differing == {"data/reports/coregister.json"}
