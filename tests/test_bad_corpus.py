"""The bad-input corpus (tests/data/bad, made by tests/data/make_bad_corpus.py) through every data stage.

download -> validate_raw -> coregister -> validate_coreg -> pair -> validate_pairs run as the CLI runs
them, in a project folder holding a copy of the corpus. Every broken item must end as a quarantine
entry (or a download error) with a reason that names the asset, or, for the acquisition without a
partner in time, as unpaired single-sensor chips; the good acquisitions beside them must go through
to paired chips. The test prints a table of cases and outcomes.

The corpus is one 720 m AOI: its S1 and S2 chips (320 m) all fall in train blocks, so the pairs gate,
after deciding every chip, fails the manifest as a training set ("no val chips of s1", ...): the one
dataset-level verdict this corpus must get.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_world import run_stage, working_directory
from typer.testing import CliRunner

from msgfm.cli import app
from msgfm.geo.io import sha256_file

GOOD = [
    "s2_farmland_20240312",
    "s2_farmland_20240710",
    "s1_farmland_20240406",
    "s1_farmland_20240806",
    "rgb_farmland_20240725",
    "dsm_farmland_20240728",
    "landcover_farmland",
]
# case -> (item id, where it is stopped, pattern of the reason)
CASES = {
    "truncated": ("s2_farmland_20240320", "raw gate", r"^B05: pixel data unreadable, file truncated or corrupt"),
    "zero-byte": ("s2_farmland_20240325", "raw gate", r"^B04: zero-byte file$"),
    "huge declared size": (
        "s2_farmland_20240330",
        "download",
        r"^B02: size \d+ bytes, item says file:size 1000000000000000$",
    ),
    "wrong CRS": (
        "s1_farmland_20240410",
        "raw gate",
        r"VV \(\S*s1_farmland_20240410/VV\.tif\) is in EPSG:32633, but the item's proj:code says EPSG:32632",
    ),
    "NaN": ("s1_farmland_20240415", "raw gate", r"^\d+ NaN/inf pixels in VV$"),
    "absurd values": (
        "s1_farmland_20240420",
        "raw gate",
        r"of pixels in VV outside the sensor range \[-50, 20\].*max 90",
    ),
    "wrong band count": ("rgb_farmland_20240726", "raw gate", r"^2 bands, the sensor needs 3: image has 2 of 3$"),
    "href outside data": ("s1_farmland_20240425", "download", r"^VV: href .*outside\.tif points outside the catalog"),
    "mismatched pair dates": (
        "s1_farmland_20230101",
        "pair",
        r"^[1-9][0-9]* chips kept unpaired \(nearest S2 beyond pair.max_days\)$",  # how many: the split geometry
    ),
}


def _corpus_module(test_data: Path):
    """tests/data/make_bad_corpus.py, imported from its file (tests/data is not a package)."""
    spec = importlib.util.spec_from_file_location("make_bad_corpus", test_data / "make_bad_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, test_data) -> Path:
    """A project folder with the corpus as its source, run through every data stage."""
    root = tmp_path_factory.mktemp("bad-corpus")
    corpus = test_data / "bad"
    shutil.copytree(corpus / "source", root / "data" / "source")
    shutil.copyfile(corpus / "outside.tif", root / "data" / "outside.tif")
    # today's params (the schema evolves) with the corpus's overrides; params.yaml in the corpus records its generation
    (root / "params.yaml").write_text(yaml.safe_dump(_corpus_module(test_data).corpus_params(), sort_keys=False))
    for stage in ("download", "validate_raw", "coregister", "validate_coreg", "pair"):
        run_stage(root, stage)
    with working_directory(root):
        gate = CliRunner().invoke(app, ["validate_pairs", "--params", "params.yaml"], catch_exceptions=False)
    assert (
        gate.exit_code == 1
        and "'splits_complete' failed: no val chips of s1, no test chips of s1, no val chips "
        "of s2, no test chips of s2:"
        in gate.output
    ), gate.output  # the only dataset-level failure: S1/S2 all train
    return root


def _outcomes(root: Path) -> dict[str, tuple[str, str]]:
    """item id -> (the first stage that stopped or demoted it, its reason); 'through' for the rest."""
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet").set_index("id")
    gates = {g: pd.read_parquet(root / f"data/gates/{g}.parquet").set_index("id") for g in ("raw", "coreg", "pairs")}
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    outcomes: dict[str, tuple[str, str]] = {}
    for iid, row in ledger.iterrows():
        if row["status"] != "ok":
            outcomes[iid] = ("download", row["error"])
        elif not gates["raw"].loc[iid, "accepted"]:
            outcomes[iid] = ("raw gate", gates["raw"].loc[iid, "reasons"])
        elif iid in gates["coreg"].index and not gates["coreg"].loc[iid, "accepted"]:
            outcomes[iid] = ("coreg gate", gates["coreg"].loc[iid, "reasons"])
        else:
            chips = manifest[manifest["source_id"] == iid]
            rejected = gates["pairs"].loc[chips["id"]].query("~accepted")
            if len(rejected):
                outcomes[iid] = ("pairs gate", "; ".join(rejected["reasons"]))
            elif row["sensor"] == "s1" and len(chips) and not chips["paired"].any():
                outcomes[iid] = ("pair", f"{len(chips)} chips kept unpaired (nearest S2 beyond pair.max_days)")
            else:
                outcomes[iid] = ("through", f"{len(chips)} chips, {int(chips['paired'].sum())} paired")
    return outcomes


def test_every_bad_case_is_stopped_with_its_reason_and_the_good_data_goes_through(corpus_run, test_data, capsys):
    outcomes = _outcomes(corpus_run)
    with capsys.disabled():
        print(f"\n{'case':<24}{'item':<24}{'stopped at':<12}reason")
        for case, (iid, _, _) in CASES.items():
            stage, reason = outcomes[iid]
            print(f"{case:<24}{iid:<24}{stage:<12}{reason}")
        for iid in GOOD:
            print(f"{'good':<24}{iid:<24}{outcomes[iid][0]:<12}{outcomes[iid][1]}")
    for case, (iid, stage, pattern) in CASES.items():
        assert outcomes[iid][0] == stage and re.search(pattern, outcomes[iid][1]), (case, outcomes[iid])
    assert set(outcomes) == set(GOOD) | {iid for iid, _, _ in CASES.values()}
    assert all(outcomes[iid][0] == "through" for iid in GOOD), {iid: outcomes[iid] for iid in GOOD}


def test_good_data_is_intact_and_paired(corpus_run, test_data):
    raw = corpus_run / "data/raw"
    for iid in GOOD:  # byte-identical copies of the corpus files
        src = next((test_data / "bad/source").rglob(f"{iid}/{iid}.json")).parent
        for tif in src.glob("*.tif"):
            assert sha256_file(next(raw.rglob(f"{iid}/{tif.name}"))) == sha256_file(tif)
    manifest = pd.read_parquet(corpus_run / "data/manifest.parquet")
    good = manifest[manifest["source_id"].isin(GOOD)]
    assert set(good["sensor"]) == {"s1", "s2", "rgb", "dsm"}
    assert good[good["sensor"].isin(["s1", "dsm"])]["paired"].all()
    assert not manifest["source_id"].isin([iid for iid, stage, _ in CASES.values() if stage != "pair"]).any()


def test_nothing_corrupt_lands_under_a_final_name(corpus_run):
    raw = corpus_run / "data/raw"
    assert not (raw / "s2/s2_farmland_20240330/B02.tif").exists()  # declared size never matched
    assert not (raw / "s1/s1_farmland_20240425/VV.tif").exists()  # the escaping href was never followed
    assert not [p for p in corpus_run.rglob("*") if p.name.endswith(".part")]
    outside = [p for p in raw.rglob("*") if not p.resolve().is_relative_to(raw.resolve())]
    assert not outside
