"""Real rasters in real catalogs' conventions through download, the raw gate and coregister (issue 13).

The catalogs are built from the real BigEarthNet v1.0 samples (tests/real_catalog.py), shaped like
Planetary Computer's or Earth Search's items: lower-case `vv`/`vh`, per-band S2 assets keyed `B02` or
`blue`, no `msgfm:*` properties.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from real_catalog import PLACES, build_pc_catalog, pc_params
from tiny_world import run_stage, tiny_params

from msgfm.sensors import S2_L2A_BANDS


def _project(root: Path, repo_root: Path, places: list[str], s2_keys: str = "pc", **source: object) -> Path:
    catalog = build_pc_catalog(root / "data" / "source", places, s2_keys=s2_keys)
    params = pc_params(tiny_params(repo_root), catalog, **source)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _run(root: Path, *stages: str) -> None:
    for stage in stages:
        run_stage(root, stage)


@pytest.mark.parametrize("s2_keys", ["pc", "earth_search"])
def test_lower_case_s1_and_common_name_s2_keys_reach_coregistration(tmp_path, repo_root, s2_keys):
    """`vv`/`vh` (PC) and `blue`/`nir08` (Earth Search) pass the raw gate and are co-registered as VV/VH, B02/B8A."""
    root = _project(tmp_path, repo_root, ["69_24"], s2_keys)
    _run(root, "download", "validate_raw", "coregister")
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet").set_index("sensor")
    assert (ledger["status"] == "ok").all(), ledger["error"].tolist()
    assert sorted(json.loads(ledger.loc["s1", "assets"])) == ["VH", "VV"]
    assert sorted(json.loads(ledger.loc["s2", "assets"])) == sorted(S2_L2A_BANDS)
    gate = pd.read_parquet(root / "data/gates/raw.parquet")
    assert gate["accepted"].all(), gate["reasons"].tolist()
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet").set_index("sensor")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    assert list(rasters.loc["s1", "band_names"]) == ["VV", "VH"]


def test_a_catalog_with_both_a_canonical_key_and_its_alias_fetches_it_once(tmp_path):
    from msgfm.ingest.sources import canonical_assets

    assets = canonical_assets("s2", {"blue": {"href": "a"}, "B02": {"href": "b"}, "vv": {"href": "c"}})
    assert assets["B02"] == {"href": "b"} and assets["blue"] == {"href": "a"}
    assert canonical_assets("s1", {"vv": {"href": "c"}}) == {"VV": {"href": "c", "msgfm:key": "vv"}}
    assert set(PLACES) == {"87_48", "36_85", "4_55", "69_24"}
