"""Clouds on real S2 (issue 13 item 6): SCL, the spectral test for L1C, eo:cloud_cover in the search.

The rasters are the real samples of tests/data: the SEN12MS-CR triplet (a clear and a cloudy L1C of one
place) and the BigEarthNet L2A patches in Planetary Computer-shaped items (tests/real_catalog.py). Real SCL
is not among the samples, so the cloudy L2A date is the real patch with a cloud painted in and an SCL of
Sen2Cor's classes at its 20 m grid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import yaml
from real_catalog import build_pc_catalog, pc_params
from tiny_world import run_stage, tiny_params

from msgfm.coreg.clouds import CLEAR, CLOUD, NODATA, SHADOW, scl_to_mask, spectral_mask
from msgfm.sensors import S2_L2A_BANDS, SENTINEL2

L1C_BANDS = SENTINEL2.band_names  # SEN12MS-CR stores all 13 L1C bands in the registry's order
PLACE = "87_48"


def _sen12ms(test_data: Path, sub: str) -> np.ndarray:
    with rasterio.open(next((test_data / "sen12ms-cr").glob(f"ROIs1970_fall_{sub}/*/*.tif"))) as src:
        return src.read()


def test_scl_classes_map_to_the_simulators_mask_codes():
    scl = np.arange(12, dtype=np.uint8)  # Sen2Cor classes 0 (no data) ... 11 (snow)
    expected = [NODATA, CLEAR, CLEAR, SHADOW, CLEAR, CLEAR, CLEAR, CLEAR, CLOUD, CLOUD, CLOUD, CLEAR]
    assert scl_to_mask(scl).tolist() == expected
    assert (CLEAR, CLOUD, SHADOW, NODATA) == (0, 1, 2, 255)  # the simulator's cloud_mask codes


def test_spectral_test_finds_the_clouds_of_a_real_l1c_and_not_of_its_clear_twin(test_data):
    """SEN12MS-CR p839: the cloudy date is flagged where it is much brighter than the clear one; the clear is not."""
    clear, cloudy = _sen12ms(test_data, "s2"), _sen12ms(test_data, "s2_cloudy")
    m_clear, m_cloudy = (spectral_mask(x[[L1C_BANDS.index(b) for b in S2_L2A_BANDS]]) for x in (clear, cloudy))
    brighter = (cloudy[1].astype(float) - clear[1]) > 1000  # blue up by 0.1 reflectance: cloud or haze
    n = brighter.size  # 65536 pixels
    assert (m_clear == CLOUD).mean() < 0.005, "a clear real scene must stay clear"
    assert (m_cloudy == CLOUD).mean() > 0.2  # measured 0.277 of n
    flagged = m_cloudy == CLOUD
    assert (flagged & brighter).sum() / flagged.sum() > 0.6  # precision against the pair difference, 0.66 measured
    assert n == 65536
    naive = cloudy[1] > 1000  # "bright blue is cloud" flags the whole clear scene too: the test must not
    assert (clear[1] > 1000).mean() > 0.5 and naive.mean() > 0.9


def test_spectral_test_leaves_real_clear_l2a_patches_clear():
    """The four BigEarthNet L2A patches are chosen cloud-free: at most 3 % flagged (bright roofs, bare soil)."""
    from rasterio.enums import Resampling
    from real_catalog import BEN, PLACES

    for s2_patch, _ in PLACES.values():
        folder = BEN / "BigEarthNet-v1.0" / s2_patch
        bands = []
        for band in S2_L2A_BANDS:
            with rasterio.open(folder / f"{s2_patch}_{band}.tif") as src:
                bands.append(src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear))
        assert (spectral_mask(np.array(bands)) == CLOUD).mean() < 0.03, s2_patch


# --- end to end: SCL through coregister and pair -------------------------------------------------

CLOUD_ROWS, CLOUD_COLS = slice(12, 60), slice(12, 60)  # 10 m pixels; multiples of 6 so 20 m and 60 m align
SHADOW_ROWS, SHADOW_COLS = slice(60, 72), slice(24, 60)
CIRRUS_ROWS = slice(96, 108)


def _scl(shape: tuple[int, int]) -> np.ndarray:
    """A Sen2Cor-like SCL at 20 m: vegetation, a cloud (medium probability at its top), its shadow, cirrus."""
    scl = np.full(shape, 4, np.uint8)
    half = lambda s: slice(s.start // 2, s.stop // 2)  # noqa: E731 - 10 m -> 20 m rows
    scl[half(CLOUD_ROWS), half(CLOUD_COLS)] = 9
    scl[6:9, half(CLOUD_COLS)] = 8
    scl[half(SHADOW_ROWS), half(SHADOW_COLS)] = 3
    scl[half(CIRRUS_ROWS), :] = 10
    scl[:, 0] = 0  # a no-data column
    return scl


def _write_scl(folder: Path, item: dict, scl: np.ndarray) -> None:
    """SCL.tif on the item's 20 m grid and its asset, as Planetary Computer's sentinel-2-l2a items have."""
    with rasterio.open(folder / "B05.tif") as f:  # a 20 m band gives SCL's grid
        profile = f.profile | {"dtype": "uint8", "nodata": 0}
    with rasterio.open(folder / "SCL.tif", "w", **profile) as f:
        f.write(scl[None])
    item["properties"]["eo:cloud_cover"] = round(float(np.isin(scl, (8, 9, 10)).mean() * 100), 3)
    band = {"data_type": "uint8", "nodata": 0, "spatial_resolution": 20}
    item["assets"]["SCL"] = {"href": "./SCL.tif", "type": item["assets"]["B05"]["type"], "raster:bands": [band]}


def _add_cloudy_date(root: Path) -> str:
    """A copy of the place's S2 item, earlier, with a painted cloud and shadow and an SCL asset; returns its id.

    The real item gets an SCL of vegetation (class 4) everywhere: it is clear.
    """
    coll = root / "data/source/sentinel-2-l2a"
    src_dir = next(p for p in coll.iterdir() if p.is_dir())
    item = json.loads((src_dir / f"{src_dir.name}.json").read_text())
    _write_scl(src_dir, item, np.full((60, 60), 4, np.uint8))
    (src_dir / f"{src_dir.name}.json").write_text(json.dumps(item))
    new_id = src_dir.name.replace("20170613", "20170608")
    dst = coll / new_id
    shutil.copytree(src_dir, dst)
    (dst / f"{src_dir.name}.json").unlink()
    for band in S2_L2A_BANDS:
        with rasterio.open(dst / f"{band}.tif") as f:
            data, profile, step = f.read(), f.profile, round(f.transform.a / 10)
        cloud = (slice(12 // step, 60 // step), slice(12 // step, 60 // step))  # CLOUD_ROWS, CLOUD_COLS
        shadow = (slice(60 // step, 72 // step), slice(24 // step, 60 // step))  # SHADOW_ROWS, SHADOW_COLS
        data[:, cloud[0], cloud[1]] = 5200 if band != "B11" else 3500
        data[:, shadow[0], shadow[1]] //= 3
        with rasterio.open(dst / f"{band}.tif", "w", **profile) as f:
            f.write(data)
    _write_scl(dst, item, _scl((60, 60)))
    item["id"] = new_id
    item["properties"]["datetime"] = "2017-06-08T10:10:31Z"
    (dst / f"{new_id}.json").write_text(json.dumps(item))
    doc = json.loads((coll / "collection.json").read_text())
    doc["links"].append({"rel": "item", "href": f"./{new_id}/{new_id}.json"})
    (coll / "collection.json").write_text(json.dumps(doc))
    return new_id


def _project(root: Path, repo_root: Path, **source: object) -> tuple[Path, str]:
    catalog = build_pc_catalog(root / "data" / "source", [PLACE])
    cloudy = _add_cloudy_date(root)
    params = pc_params(tiny_params(repo_root), catalog, **source)
    params["source"]["assets"]["s2"].append("SCL")  # the README's Planetary Computer keys
    params["coregister"]["reference_dates"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, cloudy


def test_scl_gives_the_mask_and_a_cloudy_date_is_never_the_reference_nor_clear_chips(tmp_path, repo_root):
    root, cloudy = _project(tmp_path, repo_root)
    for stage in ("download", "validate_raw", "coregister", "validate_coreg", "pair"):
        run_stage(root, stage)
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet").set_index("id")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    with rasterio.open(root / "data/coreg" / rasters.loc[f"{cloudy}_cloud", "path"]) as src:
        mask = src.read(1)
    expected = np.kron(scl_to_mask(_scl((60, 60))), np.ones((2, 2), np.uint8))  # SCL's 20 m onto the 10 m grid
    np.testing.assert_array_equal(mask, expected)
    clear_id = next(i for i in rasters.index if i.startswith("S2A") and "_cloud" not in i and i != cloudy)
    s1 = rasters[rasters["sensor"] == "s1"].iloc[0]
    assert s1["reference_id"] == clear_id  # the earlier, cloudy date would be chosen if its clouds counted as clear
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    chips = manifest[manifest["source_id"] == cloudy]
    assert len(chips) > 0
    for chip in chips.itertuples():
        window = expected[chip.row : chip.row + 32, chip.col : chip.col + 32]
        assert abs(chip.cloud_fraction - np.isin(window, (CLOUD, SHADOW)).mean()) < 1e-6, chip
    assert (chips["cloud_fraction"] > 0.5).any()  # chips under the cloud are not clear chips
    clear_chips = manifest[manifest["source_id"] == clear_id]
    assert len(clear_chips) > 0 and (clear_chips["cloud_fraction"] == 0).all()


def test_max_cloud_cover_skips_cloudy_s2_of_a_static_catalog(tmp_path, repo_root):
    root, cloudy = _project(tmp_path, repo_root, max_cloud_cover=10)
    run_stage(root, "download")
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet")
    assert cloudy not in set(ledger["id"]) and sorted(ledger["sensor"]) == ["s1", "s2"]
    assert json.loads((root / "data/reports/download.json").read_text())["too_cloudy"] == 1


def test_max_cloud_cover_is_asked_of_a_stac_api_and_keeps_s1(tmp_path, repo_root):
    """The S2 search carries an eo:cloud_cover query (S1 items have none: they are searched without it)."""
    from httpserver import LoopbackServer

    from msgfm.config import DownloadParams, SourceParams
    from msgfm.ingest.sources import iter_items

    root, cloudy = _project(tmp_path, repo_root)
    source = root / "data/source"
    with LoopbackServer(source) as srv:
        for path in sorted(source.glob("*/*/*.json")):
            item = json.loads(path.read_text())
            for a in item["assets"].values():
                a["href"] = f"{srv.url}/{path.parent.relative_to(source).as_posix()}/{a['href'][2:]}"
            srv.items.append(item)
        cfg = SourceParams(
            kind="stac_api",
            url=f"{srv.url}/api",
            collections={"s2": "sentinel-2-l2a", "s1": "sentinel-1-rtc"},
            max_cloud_cover=10,
        )
        ids = {r.id: r.sensor for r in iter_items(cfg, limits=DownloadParams())}
        every = {r.id for r in iter_items(cfg.model_copy(update={"max_cloud_cover": None}), limits=DownloadParams())}
    assert cloudy in every and cloudy not in ids
    assert sorted(ids.values()) == ["s1", "s2"]  # the clear S2 and the S1, whose items lack eo:cloud_cover
