"""Real rasters in real catalogs' conventions through download, the raw gate and coregister (issue 13).

The catalogs are built from the real BigEarthNet v1.0 samples (tests/real_catalog.py), shaped like
Planetary Computer's or Earth Search's items: lower-case `vv`/`vh`, per-band S2 assets keyed `B02` or
`blue`, no `msgfm:*` properties.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from real_catalog import BEN, PLACES, build_pc_catalog, pc_params
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


def test_places_without_msgfm_aoi_get_one_aoi_each_on_their_utm_grid(tmp_path, repo_root):
    """Four real places (three UTM zones, two patches 50 km apart in one zone): four AOIs, each named after its
    footprints' south-west corner in km in the UTM zone of its place, nothing quarantined."""
    root = _project(tmp_path, repo_root, list(PLACES))
    _run(root, "download", "validate_raw", "coregister")
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet")
    by_place = {"_".join(iid.split("_")[-2:]): aoi for iid, aoi in zip(ledger["id"], ledger["aoi"], strict=True)}
    assert by_place == {
        "87_48": "aoi_32633_404_5341",
        "36_85": "aoi_32629_643_5796",
        "4_55": "aoi_32629_604_5832",
        "69_24": "aoi_32636_377_6967",  # 35VPK's patch lies east of 30 E: the UTM zone of its place is 36
    }
    assert ledger.groupby("aoi")["sensor"].apply(sorted).tolist() == [["s1", "s2"]] * 4  # each S1 with its S2
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    for aoi, epsg in [("aoi_32633_404_5341", 32633), ("aoi_32636_377_6967", 32635)]:  # the S2 tile's own grid
        grid = json.loads((root / "data/coreg" / aoi / "grids.json").read_text())["s10"]
        assert grid["crs"] == f"EPSG:{epsg}" and grid["width"] == grid["height"] == 120


def test_an_s1_footprint_whose_centre_lies_in_another_square_stays_with_its_s2(tmp_path, repo_root):
    """The S1 item's footprint (a published envelope, wider than its pixels) reaches 12 km east, so its centre
    lies in the next 10 km square from the S2's: grouped by overlap, the pair is still one AOI and co-registered."""
    from msgfm.config import SourceParams
    from msgfm.ingest.aois import aoi_square

    root = _project(tmp_path, repo_root, ["87_48", "4_55"])
    path = next((root / "data/source/sentinel-1-rtc").glob("*87_48/*87_48.json"))
    item = json.loads(path.read_text())
    west, south, east, north = item["bbox"]
    item["bbox"] = [west, south, east + 0.18, north]  # about 12 km at 48 N
    item["geometry"]["coordinates"] = [[[west, south], [east + 0.18, south], [east + 0.18, north], [west, north],
                                        [west, south]]]  # fmt: skip
    path.write_text(json.dumps(item))
    s2 = json.loads(next((root / "data/source/sentinel-2-l2a").glob("*87_48/*87_48.json")).read_text())
    cfg = SourceParams(aoi_tile_m=10000)
    assert aoi_square(item["bbox"], cfg) != aoi_square(s2["bbox"], cfg)  # the centre rule would split the pair
    _run(root, "download", "validate_raw", "coregister")
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet")
    assert ledger.groupby("aoi")["sensor"].apply(sorted).to_dict() == {
        "aoi_32633_404_5340": ["s1", "s2"],  # one AOI, named after the south-west corner of the pair's union in UTM
        "aoi_32629_604_5832": ["s1", "s2"],  # the other place, 1500 km away: its own AOI
    }
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet")
    assert (rasters["status"] == "ok").all() and (rasters["sensor"] == "s1").sum() == 2, rasters["error"].tolist()


def test_one_aoi_for_all_when_aoi_tile_m_is_null(tmp_path, repo_root):
    root = _project(tmp_path, repo_root, ["87_48", "69_24"], aoi_tile_m=None, aoi="ben")
    run_stage(root, "download")
    assert set(pd.read_parquet(root / "data/raw/acquisitions.parquet")["aoi"]) == {"ben"}


def test_an_s2_in_epsg4326_gets_a_metric_aoi_grid(tmp_path, repo_root):
    """An S2 exported in degrees (GEE-style) is co-registered on the 10 m UTM grid of its place, not in degrees."""
    root = _project(tmp_path, repo_root, ["69_24"])
    item_dir = next((root / "data/source/sentinel-2-l2a").iterdir())
    for band_file in item_dir.glob("*.tif"):
        _to_epsg4326(band_file)
    item_path = item_dir / f"{item_dir.name}.json"
    item = json.loads(item_path.read_text())
    item["properties"]["proj:epsg"] = 4326
    item_path.write_text(json.dumps(item))
    _run(root, "download", "validate_raw", "coregister")
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    aoi = rasters["aoi"].iloc[0]
    grid = json.loads((root / "data/coreg" / aoi / "grids.json").read_text())["s10"]
    assert grid["crs"] == "EPSG:32636" and grid["transform"][0] == 10.0, grid  # the UTM zone of its centre


def _to_epsg4326(path: Path) -> None:
    """Rewrite a raster in EPSG:4326 (bilinear; nodata 0 outside the rotated footprint), as a GEE export would be."""
    import numpy as np
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(path) as src:
        tf, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        out = np.zeros((1, h, w), src.dtypes[0])
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs, dst_transform=tf,
                  dst_crs="EPSG:4326", dst_nodata=0, resampling=Resampling.bilinear)  # fmt: skip
        profile = {**src.profile, "crs": "EPSG:4326", "transform": tf, "width": w, "height": h, "nodata": 0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out)


def test_s1_shift_noise_on_real_co_located_patches_is_not_applied(tmp_path, repo_root):
    """BigEarthNet S1 and S2 share one grid: each S1 is left unshifted, with the reason; the coreg gate accepts it."""
    root = _project(tmp_path, repo_root, list(PLACES))
    _run(root, "download", "validate_raw", "coregister", "validate_coreg")
    s1 = pd.read_parquet(root / "data/coreg/rasters.parquet").query("sensor == 's1'")
    assert len(s1) == 4 and (s1["status"] == "ok").all()
    _assert_colocated_s1_left_unshifted(root, s1, max_px=120)


def _assert_colocated_s1_left_unshifted(root: Path, s1: pd.DataFrame, max_px: int) -> None:
    """Real S1 on its S2's grid: its shift noise is not applied, with the reason; the coreg gate accepts it and calls
    its ZNCC residual not measurable (speckle edges do not match optical ones), with the peak and the window, in the
    gate table's residual_note and in the report, instead of passing it as 0 px."""
    for r in s1.itertuples():
        applied = (r.shift_dx_px**2 + r.shift_dy_px**2) ** 0.5
        assert applied < 0.5 or r.shift_note, r  # issue 13: |shift| < 0.5 px or "not applied"
        assert r.shift_confidence < 0.5 and "not applied" in r.shift_note and applied == 0.0
    gate = pd.read_parquet(root / "data/gates/coreg.parquet").set_index("id")
    assert gate["accepted"].all(), gate["reasons"].tolist()
    report = json.loads((root / "data/reports/gates/coreg.json").read_text())
    assert report["residual_px"]["not_measurable"] == len(s1)
    assert report["residual_px"]["notes"] == gate.loc[sorted(s1["id"]), "residual_note"].to_dict()
    for i, note in report["residual_px"]["notes"].items():
        found = re.search(r"peak ZNCC (\d\.\d\d) < gates.min_residual_zncc 0.4 over a (\d+)x(\d+) px", note)
        peak, w, h = found.groups()
        assert float(peak) < 0.4 and 0 < int(w) <= max_px and 0 < int(h) <= max_px, note
        assert np.isnan(gate.loc[i, "residual_px"]), gate.loc[i]


def _ben_band(folder: str, band: str) -> np.ndarray:
    """One 10 m band of a real BigEarthNet patch (S2 or S1 folder), float32."""
    import rasterio

    base = BEN / ("BigEarthNet-S1-v1.0" if folder.startswith("S1") else "BigEarthNet-v1.0") / folder
    with rasterio.open(base / f"{folder}_{band}.tif") as src:
        return src.read(1).astype(np.float32)


@pytest.mark.parametrize("place", sorted(PLACES))
def test_the_coreg_gate_measure_finds_a_known_shift_of_real_texture_and_refuses_s1_speckle(place):
    """ZNCC (msgfm.coreg.residuals, the gate's measure) on real BigEarthNet patches: the red band's edges moved by
    (1.6, -0.7) px against the blue and green bands' edges measure that shift with a peak above
    gates.min_residual_zncc; the co-located real S1 against the same S2 edges peaks below it (speckle edges do
    not match optical ones), so the gate calls its residual not measurable instead of passing it as aligned."""
    from scipy import ndimage

    from msgfm.config import CoregisterParams, GatesParams
    from msgfm.coreg.features import gradient_feature
    from msgfm.coreg.residuals import zncc_shift

    cfg, (s2_patch, s1_patch) = CoregisterParams(), PLACES[place]
    ones = np.ones((120, 120), bool)
    reference = gradient_feature(np.stack([_ben_band(s2_patch, b) for b in ("B02", "B03")]), ones, cfg.feature_sigma_px)
    radius = int(np.ceil(cfg.max_shift_px)) + 1
    red = ndimage.shift(_ben_band(s2_patch, "B04"), (-0.7, 1.6), order=3, mode="nearest")  # 1.6 px right, 0.7 up
    dx, dy, peak = zncc_shift(reference, gradient_feature(red, ones, cfg.feature_sigma_px), radius)
    assert abs(dx - 1.6) < 0.2 and abs(dy + 0.7) < 0.2, (dx, dy)
    s1 = np.stack([_ben_band(s1_patch, b) for b in cfg.s1_feature_bands])
    *_, s1_peak = zncc_shift(reference, gradient_feature(s1, ones, cfg.s1_speckle_sigma_px), radius)
    assert s1_peak < GatesParams().min_residual_zncc <= peak, (s1_peak, peak)


def _sen12ms_folder(root: Path, test_data: Path) -> Path:
    """The real SEN12MS-CR triplet (stacked S1 VV/VH and 13-band S2 L1C files) as a folder source with sidecars."""
    import shutil

    folder = root / "data" / "source"
    for sub, sensor, when in (("s1", "s1", "2017-10-02T10:00:00Z"), ("s2", "s2", "2017-10-01T10:00:00Z"),
                              ("s2_cloudy", "s2", "2017-10-11T10:00:00Z")):  # fmt: skip
        tif = next((test_data / "sen12ms-cr").glob(f"ROIs1970_fall_{sub}/*/*.tif"))
        (folder / sub).mkdir(parents=True)
        shutil.copyfile(tif, folder / sub / tif.name)
        (folder / sub / tif.with_suffix(".json").name).write_text(json.dumps({"sensor": sensor, "datetime": when}))
    return folder


def test_stacked_geotiffs_are_split_into_bands_and_none_vanishes(tmp_path, repo_root, test_data):
    """SEN12MS-CR's stacked files: each band becomes its own asset (publisher's order) and every item gets a row; its
    S1, on the S2's grid like BigEarthNet's, is left unshifted and its residual called not measurable."""
    folder = _sen12ms_folder(tmp_path, test_data)
    params = pc_params(tiny_params(repo_root), folder)
    params["source"] |= {"kind": "folder", "path": str(folder)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(tmp_path, "download", "validate_raw", "coregister", "validate_coreg")
    ledger = pd.read_parquet(tmp_path / "data/raw/acquisitions.parquet")
    assert (ledger["status"] == "ok").all(), ledger["error"].tolist()
    s1 = ledger[ledger["sensor"] == "s1"].iloc[0]
    vh = tmp_path / "data/raw" / json.loads(s1["assets"])["VH"]
    import rasterio

    source_s1 = next(folder.glob("s1/*.tif"))
    with rasterio.open(vh) as one, rasterio.open(source_s1) as stacked:
        assert one.count == 1 and (one.read(1) == stacked.read(2)).all()  # VH is the publisher's 2nd band
    assert pd.read_parquet(tmp_path / "data/gates/raw.parquet")["accepted"].all()
    rasters = pd.read_parquet(tmp_path / "data/coreg/rasters.parquet")
    assert set(rasters["item_id"]) == set(ledger["id"])  # no accepted item vanishes
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    _assert_colocated_s1_left_unshifted(tmp_path, rasters.query("sensor == 's1'"), max_px=256)


def test_unnamed_stacked_file_and_unmatched_keys_are_refused_with_the_reason(tmp_path, repo_root):
    """A 3-band S1 file cannot be named: a failed row says so; an item with none of the wanted keys is no success."""
    import numpy as np
    import rasterio

    from msgfm.config import SourceParams
    from msgfm.ingest.records import record_from_item
    from msgfm.ingest.sources import iter_items

    folder = tmp_path / "src"
    folder.mkdir()
    profile = dict(driver="GTiff", width=8, height=8, count=3, dtype="float32", crs="EPSG:32632",
                   transform=rasterio.transform.from_origin(600000, 5340000, 10, 10))  # fmt: skip
    with rasterio.open(folder / "s1.tif", "w", **profile) as dst:
        dst.write(np.full((3, 8, 8), -12.0, np.float32))
    (folder / "s1.json").write_text(json.dumps({"sensor": "s1", "datetime": "2024-05-01T00:00:00Z"}))
    (rec,) = iter_items(SourceParams(kind="folder", path=folder))
    assert re.fullmatch(r".*s1\.tif: 3 bands without names, and sensor s1 has 2 \(VV, VH\); give them .*", rec.error)
    item = {"id": "x", "properties": {"msgfm:sensor": "s1"}, "assets": {"hh": {"href": "hh.tif"}}}
    rec = record_from_item(item, str(tmp_path / "x.json"), SourceParams())
    assert (
        rec.error == "item x: none of the wanted asset keys ['VH', 'VV'] (source.assets.s1) is among its assets ['hh']"
    )


@pytest.mark.parametrize("declared", ["linear", None])
def test_linear_power_s1_is_converted_to_db_on_download(tmp_path, repo_root, declared):
    """sentinel-1-rtc in linear power (declared by raster:bands unit, or undeclared: the collection's) lands in dB."""
    import numpy as np
    import rasterio

    root = _project(tmp_path, repo_root, ["87_48"])
    item_dir = next((root / "data/source/sentinel-1-rtc").iterdir())
    original = {}
    for pol in ("VV", "VH"):
        with rasterio.open(item_dir / f"{pol}.tif") as src:
            original[pol], profile = src.read(1), src.profile
        with rasterio.open(item_dir / f"{pol}.tif", "w", **profile) as dst:
            dst.write((10 ** (original[pol] / 10)).astype(np.float32)[None])
    item_path = item_dir / f"{item_dir.name}.json"
    item = json.loads(item_path.read_text())
    for asset in item["assets"].values():
        asset["raster:bands"] = [{"data_type": "float32", "nodata": -32768, **({"unit": declared} if declared else {})}]
    item_path.write_text(json.dumps(item))
    _run(root, "download", "validate_raw")
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet").set_index("sensor")
    for pol, rel in json.loads(ledger.loc["s1", "assets"]).items():
        with rasterio.open(root / "data/raw" / rel) as src:
            np.testing.assert_allclose(src.read(1), original[pol], atol=1e-3)
    stored = json.loads((root / "data/raw" / ledger.loc["s1", "item_path"]).read_text())
    assert stored["assets"]["VV"]["raster:bands"][0]["unit"] == "dB"
    assert pd.read_parquet(root / "data/gates/raw.parquet")["accepted"].all()


def test_linear_units_are_read_from_raster_bands_before_the_collection():
    from msgfm.ingest.records import is_linear

    assert is_linear({"raster:bands": [{"unit": "linear"}]}, "sentinel-1-grd")
    assert not is_linear({"raster:bands": [{"unit": "dB"}]}, "sentinel-1-rtc")
    assert is_linear({}, "sentinel-1-rtc") and not is_linear({}, "sentinel-1-grd")


def test_int16_s2_is_accepted_when_lossless(tmp_path, repo_root):
    """A Google Earth Engine-style int16 S2 export (same values) passes the raw gate and is co-registered as uint16."""
    import numpy as np
    import rasterio

    root = _project(tmp_path, repo_root, ["87_48"])
    item_dir = next((root / "data/source/sentinel-2-l2a").iterdir())
    for band_file in item_dir.glob("*.tif"):
        with rasterio.open(band_file) as src:
            data, profile = src.read(), src.profile
        with rasterio.open(band_file, "w", **(profile | {"dtype": "int16"})) as dst:
            dst.write(data.astype(np.int16))
    _run(root, "download", "validate_raw", "coregister")
    gate = pd.read_parquet(root / "data/gates/raw.parquet")
    assert gate["accepted"].all(), gate["reasons"].tolist()
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()


def test_bright_l2a_over_snow_is_not_out_of_range(tmp_path, repo_root):
    """A real patch whose visible bands read 10000-14000 on a tenth of its pixels (fresh snow) passes the raw gate."""
    import numpy as np
    import rasterio

    root = _project(tmp_path, repo_root, ["87_48"])
    item_dir = next((root / "data/source/sentinel-2-l2a").iterdir())
    for band in ("B02", "B03", "B04"):
        with rasterio.open(item_dir / f"{band}.tif") as src:
            data, profile = src.read(), src.profile
        data[:, :12, :] = np.linspace(10000, 14000, data.shape[2]).astype(np.uint16)  # top 10 %: snow
        with rasterio.open(item_dir / f"{band}.tif", "w", **profile) as dst:
            dst.write(data)
    _run(root, "download", "validate_raw")
    gate = pd.read_parquet(root / "data/gates/raw.parquet")
    assert gate["accepted"].all(), gate["reasons"].tolist()
