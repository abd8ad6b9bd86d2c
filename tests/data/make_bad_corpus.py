"""Generate tests/data/bad/: a static STAC catalog where good acquisitions sit beside every kind of bad input.

The good part is a one-AOI world from `msgfm simulate` (72 px AOI, 240 px fine grid, two S2 and two S1
dates, one RGB, one DSM, land cover), small enough to commit. Each bad case is a copy of a good item
under a new id and date, broken in one way (see tests/data/bad/README.md and tests/test_bad_corpus.py).

    .venv/bin/python tests/data/make_bad_corpus.py [OUT]      # default OUT: tests/data/bad

Deterministic: the simulator is seeded and the breakages are fixed, so the corpus regenerates
byte for byte.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from tiny_world import tiny_params, working_directory  # noqa: E402

from msgfm.cli import app  # noqa: E402
from msgfm.geo.io import sha256_file, write_cog  # noqa: E402

AOI = "farmland"
GOOD_S2, GOOD_S1, GOOD_RGB = "s2_farmland_20240312", "s1_farmland_20240406", "rgb_farmland_20240725"


def corpus_params() -> dict:
    """The params the corpus is generated and run with: one small AOI; gates that expect many rejects."""
    params = tiny_params(REPO)
    params["simulate"].update(
        aois=[a for a in params["simulate"]["aois"] if a["name"] == AOI],
        size_px=72,
        fine_size_px=240,
        s2_dates=2,
        s1_dates=2,
        cloudy_fraction=0.0,
    )
    # val blocks for the fine grid (the 320 m S1/S2 chips stay train: the pairs gate fails the manifest). Labels by
    # area (the default label_min_fraction): in this one small AOI a class covers 5 % of a val chip only, and the
    # split rule keeps the lone val block (the class is reported absent from train) rather than turning it train
    params["pair"].update(block_m=320, val_fraction=0.3)
    params["gates"].update(min_pass_rate=0.3)  # most items of this catalog are broken on purpose
    return params


# --- editing the catalog -----------------------------------------------------------------------------


def _item_path(source: Path, iid: str) -> Path:
    return next(source.rglob(f"{iid}/{iid}.json"))


def clone(source: Path, iid: str, new_id: str, date: str) -> Path:
    """Copy item `iid` with its asset files to `new_id` acquired on `date` (YYYY-MM-DD); return its folder."""
    src = _item_path(source, iid)
    dst_dir = src.parent.parent / new_id
    shutil.copytree(src.parent, dst_dir)
    (dst_dir / src.name).rename(dst_dir / f"{new_id}.json")
    item = json.loads((dst_dir / f"{new_id}.json").read_text())
    item["id"] = new_id
    item["properties"]["datetime"] = item["properties"]["datetime"].replace(item["properties"]["datetime"][:10], date)
    (dst_dir / f"{new_id}.json").write_text(json.dumps(item))
    collection = dst_dir.parent / "collection.json"
    coll = json.loads(collection.read_text())
    coll["links"].append({"rel": "item", "href": f"./{new_id}/{new_id}.json", "type": "application/geo+json"})
    collection.write_text(json.dumps(coll))
    return dst_dir


def edit_asset(folder: Path, key: str, *, declare: bool = True, **fields) -> None:
    """Update an asset's file:size/checksum to the file's bytes (or drop them), then set `fields`."""
    path = next(folder.glob("*.json"))
    item = json.loads(path.read_text())
    asset = item["assets"][key]
    asset.pop("file:size", None)
    asset.pop("file:checksum", None)
    tif = folder / f"{key}.tif"
    if declare and tif.is_file():
        asset["file:size"] = tif.stat().st_size
        asset["file:checksum"] = "1220" + sha256_file(tif)
    asset.update(fields)
    path.write_text(json.dumps(item))


def rewrite(folder: Path, key: str, change) -> None:
    """Rewrite an asset COG with `change(array, profile) -> (array, crs)` applied; declare the new bytes."""
    tif = folder / f"{key}.tif"
    with rasterio.open(tif) as src:
        array, profile = src.read(), src.profile
    array, crs = change(array, profile)
    write_cog(tif, array, crs=crs, transform=profile["transform"], nodata=profile["nodata"])
    edit_asset(folder, key)


# --- the cases ---------------------------------------------------------------------------------------


def break_items(source: Path) -> None:
    """Add one broken copy of a good item per case."""
    d = clone(source, GOOD_S2, "s2_farmland_20240320", "2024-03-20")  # truncated
    b05 = d / "B05.tif"
    b05.write_bytes(b05.read_bytes()[: b05.stat().st_size // 2])
    edit_asset(d, "B05")  # the publisher declares the truncated bytes: download accepts them, the gate must not

    d = clone(source, GOOD_S2, "s2_farmland_20240325", "2024-03-25")  # zero-byte
    (d / "B04.tif").write_bytes(b"")
    edit_asset(d, "B04", declare=False)

    d = clone(source, GOOD_S2, "s2_farmland_20240330", "2024-03-30")  # huge declared size
    edit_asset(d, "B02", **{"file:size": 10**15})

    d = clone(source, GOOD_S1, "s1_farmland_20240410", "2024-04-10")  # wrong CRS: same numbers, next UTM zone
    for key in ("VV", "VH"):
        rewrite(d, key, lambda a, p: (a, "EPSG:32633"))

    d = clone(source, GOOD_S1, "s1_farmland_20240415", "2024-04-15")  # NaN
    rewrite(d, "VV", lambda a, p: (np.where(np.arange(a.size).reshape(a.shape) % 7 == 0, np.nan, a), p["crs"]))

    d = clone(source, GOOD_S1, "s1_farmland_20240420", "2024-04-20")  # absurd values: +90 dB backscatter
    rewrite(d, "VV", lambda a, p: (np.full_like(a, 90.0), p["crs"]))

    d = clone(source, GOOD_RGB, "rgb_farmland_20240726", "2024-07-26")  # wrong band count: 2 of 3
    rewrite(d, "image", lambda a, p: (a[:2], p["crs"]))

    clone(source, GOOD_S1, "s1_farmland_20230101", "2023-01-01")  # no S2 within pair.max_days

    d = clone(source, GOOD_S1, "s1_farmland_20240425", "2024-04-25")  # href outside the data folder
    edit_asset(d, "VV", href="../../../outside.tif")


def main(out: Path) -> None:
    params = corpus_params()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with working_directory(root):
            result = CliRunner().invoke(app, ["simulate", "--params", "params.yaml"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        if out.exists():
            shutil.rmtree(out / "source", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(root / "data" / "source", out / "source")
    break_items(out / "source")
    shutil.copyfile(next((out / "source").rglob(f"{GOOD_S1}/VV.tif")), out / "outside.tif")
    (out / "params.yaml").write_text(
        "# params of the bad-input corpus (generated by tests/data/make_bad_corpus.py)\n"
        + yaml.safe_dump(params, sort_keys=False)
    )
    print(f"bad-input corpus in {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file())} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "bad")
