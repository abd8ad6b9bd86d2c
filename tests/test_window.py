"""Windowed reads of remote COGs (msgfm.ingest.window) against the loopback HTTP server, which counts bytes.

The COGs are real: BigEarthNet's S2 B04 and S1 VV patches of one place (tests/data/bigearthnet-v1), mirrored
out to a 36 km scene (3600 px at 10 m, 512 px tiles, deflate, overviews: the layout of Planetary Computer's
and Earth Search's COGs) in their own UTM grid, served by an item-search API shaped like Planetary
Computer's. A 2 km AOI of that scene must transfer a small fraction of the file, with exactly the source's
pixels under the AOI square plus the margin.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from httpserver import LoopbackServer
from rasterio.io import MemoryFile
from rasterio.shutil import copy as copy_raster
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from real_catalog import BEN, COG, PLACES

from msgfm.config import DownloadParams, SourceParams
from msgfm.geo.io import sha256_file
from msgfm.ingest.download import download, read_ledger

SCENE_PX = 3600
TILE_M = 2000
MARGIN_M = 200.0
CENTRE = (421_000.0, 5_323_000.0)  # EPSG:32633, inside the mirrored scene of place 87_48
SQUARE = (420_000.0, 5_322_000.0, 422_000.0, 5_324_000.0)  # the 2 km UTM square holding CENTRE
FAST = {"retries": 1, "backoff_s": 0.01, "timeout_s": 5, "workers": 2}


def _scene(patch: Path, dest: Path, side: int = SCENE_PX) -> None:
    """A `side` px COG of a real patch mirrored out from its own origin (same CRS, transform, dtype)."""
    with rasterio.open(patch) as src:
        data, profile = src.read(1), src.profile
    big = np.pad(data, ((0, side - data.shape[0]), (0, side - data.shape[1])), mode="symmetric")
    profile |= {"driver": "GTiff", "width": side, "height": side}
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(big, 1)
        with mem.open() as tmp:
            copy_raster(tmp, dest, driver="COG", blocksize=512, compress="deflate", predictor=2)


def _item(item_id: str, sensor: str, key: str, href: str, path: Path, when: str) -> dict:
    """A Planetary-Computer-shaped item (sentinel-2-l2a / sentinel-1-rtc) with one asset at `href`."""
    with rasterio.open(path) as src:
        crs, bounds, shape, tf = src.crs, src.bounds, src.shape, src.transform
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    asset = {"href": href, "type": COG, "roles": ["data"], "proj:shape": list(shape), "proj:transform": list(tf)[:6]}
    props = {"datetime": when, "proj:epsg": crs.to_epsg()}
    if sensor == "s2":
        asset |= {"eo:bands": [{"name": "B04", "common_name": "red"}]}
        asset["raster:bands"] = [{"data_type": "uint16", "nodata": 0, "scale": 0.0001, "unit": "reflectance"}]
        props |= {"eo:cloud_cover": 0.0, "s2:processing_baseline": "02.05", "s2:product_type": "S2MSI2A"}
    else:
        asset["raster:bands"] = [{"data_type": "float32", "nodata": -32768, "unit": "dB"}]
        props |= {"sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW"}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a" if sensor == "s2" else "sentinel-1-rtc",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        "bbox": [west, south, east, north],
        "properties": props,
        "assets": {key: asset},
        "links": [],
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cogs")
    s2_patch, s1_patch = PLACES["87_48"]
    _scene(BEN / "BigEarthNet-v1.0" / s2_patch / f"{s2_patch}_B04.tif", folder / "B04.tif")
    _scene(BEN / "BigEarthNet-S1-v1.0" / s1_patch / f"{s1_patch}_VV.tif", folder / "vv.tif")
    return folder


def _served(srv: LoopbackServer, folder: Path, *, wrong_size: bool = True) -> None:
    """Put the API's items on `srv`: S2 and S1 of the scene, and an S2 whose file:size is wrong (a defect)."""
    url = f"{srv.url}/B04.tif?sv=2024&sig=secret"  # a signed href, as Planetary Computer's signer makes
    good = _item("S2A_MSIL2A_20170613T101031_R022_T33UUP", "s2", "B04", url, folder / "B04.tif", "2017-06-13T10:10:31Z")
    good["assets"]["B04"]["file:size"] = (folder / "B04.tif").stat().st_size
    s1 = _item("S1A_IW_GRDH_1SDV_20170613T165043_33UUP", "s1", "vv", f"{srv.url}/vv.tif?sv=2024&sig=secret",
               folder / "vv.tif", "2017-06-13T16:50:43Z")  # fmt: skip
    srv.items[:] = [good, s1]
    srv.require_query = "sig=secret"  # every file request (HEAD and GDAL's ranges) must carry the signature
    if wrong_size:
        bad = json.loads(json.dumps(good).replace("20170613T101031", "20170623T101031"))
        bad["assets"]["B04"]["file:size"] += 1000
        srv.items.append(bad)


def _source(srv: LoopbackServer) -> SourceParams:
    """The README's Planetary Computer block, the URL changed, over a ~500 m bbox around CENTRE."""
    (lon,), (lat,) = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [CENTRE[0]], [CENTRE[1]])
    return SourceParams(
        kind="stac_api",
        url=f"{srv.url}/api",
        collections={"s1": "sentinel-1-rtc", "s2": "sentinel-2-l2a"},
        bbox=[lon - 0.003, lat - 0.002, lon + 0.003, lat + 0.002],
        aoi="ben",
        aoi_tile_m=TILE_M,
        assets={"s1": ["vv"], "s2": ["B04"]},
    )


def _run(source: SourceParams, raw: Path, **kw):
    cfg = DownloadParams(out_dir=raw, window_margin_m=MARGIN_M, **{**FAST, **kw})
    return download(source, cfg, report_path=None, progress=False)


def test_a_small_aoi_of_a_large_cog_transfers_a_small_fraction_with_the_source_pixels(scenes, tmp_path):
    raw = tmp_path / "raw"
    with LoopbackServer(scenes) as srv:
        _served(srv, scenes)
        summary = _run(_source(srv), raw)
        served, url = dict(srv.bytes_served), srv.url
    size = (scenes / "B04.tif").stat().st_size
    fraction = served["/B04.tif"] / size
    print(f"windowed read: {served['/B04.tif']} of {size} bytes ({fraction:.1%})")
    assert 0 < fraction < 0.10 and served["/vv.tif"] < 0.10 * (scenes / "vv.tif").stat().st_size
    ledger = read_ledger(raw).set_index("id")
    assert summary.failed == 1 and (ledger["status"] == "ok").sum() == 2
    assert set(ledger.loc[ledger["status"] == "ok", "aoi"]) == {"ben_32633_420_5322"}
    for sensor, name in (("s2", "B04"), ("s1", "VV")):
        row = ledger[(ledger["sensor"] == sensor) & (ledger["status"] == "ok")].iloc[0]
        dest = raw / json.loads(row["assets"])[name]
        record = json.loads(dest.with_name(f"{name}.window.json").read_text())
        source_file = scenes / ("B04.tif" if sensor == "s2" else "vv.tif")
        assert record["href"] == f"{url}/{source_file.name}"  # the source, without its signature
        assert record["local"] == {"bytes": dest.stat().st_size, "sha256": sha256_file(dest)}
        w = record["window"]
        assert record["remote_size"] == source_file.stat().st_size
        with rasterio.open(dest) as got, rasterio.open(source_file) as src:
            window = Window(w["col_off"], w["row_off"], w["width"], w["height"])
            np.testing.assert_array_equal(got.read(1), src.read(1, window=window))
            assert got.transform == src.window_transform(window) and got.crs == src.crs
            left, bottom, right, top = got.bounds
        grown = (SQUARE[0] - MARGIN_M, SQUARE[1] - MARGIN_M, SQUARE[2] + MARGIN_M, SQUARE[3] + MARGIN_M)
        assert (left, bottom) <= grown[:2] and (right, top) >= grown[2:]  # covers the square and margin ...
        assert right - left < grown[2] - grown[0] + 20 and top - bottom < grown[3] - grown[1] + 20  # ... only
        item = json.loads((raw / row["item_path"]).read_text())
        assert item["assets"][name]["proj:shape"] == [w["height"], w["width"]]
    bad = ledger[ledger["status"] != "ok"].iloc[0]
    assert "B04.tif" in bad["error"] and "file:size" in bad["error"] and "sig=" not in bad["error"]


def test_a_rerun_skips_complete_windows_and_rereads_a_damaged_one(scenes, tmp_path):
    raw = tmp_path / "raw"
    with LoopbackServer(scenes) as srv:
        _served(srv, scenes, wrong_size=False)
        _run(_source(srv), raw)
        first = dict(srv.bytes_served)
        (raw / "acquisitions.parquet").unlink()  # no ledger: every asset is looked at again
        summary = _run(_source(srv), raw)
        assert dict(srv.bytes_served) == first and summary.bytes == 0 and summary.fetched == 2
        b04 = next(raw.glob("s2/*/B04.tif"))
        b04.write_bytes(b04.read_bytes()[:-10])  # damaged on disk: its record no longer matches
        (raw / "acquisitions.parquet").unlink()
        summary = _run(_source(srv), raw)
        assert srv.bytes_served["/B04.tif"] > first["/B04.tif"] and srv.bytes_served["/vv.tif"] == first["/vv.tif"]
    with rasterio.open(b04) as got:
        assert got.read(1).any()


def test_windowed_false_fetches_whole_files(scenes, tmp_path):
    """The baseline the windowed read is measured against: every byte of the file travels."""
    with LoopbackServer(scenes) as srv:
        _served(srv, scenes, wrong_size=False)
        summary = _run(_source(srv), tmp_path / "raw", windowed=False)
        assert summary.failed == 0
        assert srv.bytes_served["/B04.tif"] == (scenes / "B04.tif").stat().st_size


def _crop(scene: Path, dest: Path, col: int, row: int, size: int) -> None:
    """A small COG cut from `scene` (a second, smaller acquisition inside one square)."""
    with rasterio.open(scene) as src:
        window = Window(col, row, size, size)
        profile = src.profile | {"driver": "GTiff", "width": size, "height": size}
        profile["transform"] = src.window_transform(window)
        data = src.read(window=window)
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data)
        with mem.open() as tmp:
            copy_raster(tmp, dest, driver="COG", blocksize=512, compress="deflate")


def test_a_search_bbox_is_tiled_into_squares_and_an_item_feeds_every_square_it_overlaps(scenes, tmp_path):
    """A 4 x 2 km bbox covers 3 x 2 squares of 2 km: both 36 km scenes feed all six, a 1 km scene one."""
    _crop(scenes / "B04.tif", tmp_path / "small.tif", col=1610, row=1890, size=100)  # x 420.5-421.5 km
    shutil.copy(tmp_path / "small.tif", scenes / "small.tif")
    west, south, east, north = transform_bounds("EPSG:32633", "EPSG:4326", 419_500, 5_321_500, 423_500, 5_323_500)
    squares = {f"ben_32633_{x}_{y}" for x in (418, 420, 422) for y in (5320, 5322)}
    with LoopbackServer(scenes) as srv:
        _served(srv, scenes, wrong_size=False)
        small = _item("S2B_MSIL2A_20170616T100029_R122_T33UUP", "s2", "B04", f"{srv.url}/small.tif?sig=secret",
                      scenes / "small.tif", "2017-06-16T10:00:29Z")  # fmt: skip
        srv.items.append(small)
        srv.page_size = 2  # the 3 items come on 2 pages, the second through the first's `next` link
        source = _source(srv).model_copy(update={"bbox": [west, south, east, north]})
        listed = _listing(source)
        assert _listing(source) == listed  # stable names
        summary = _run(source, tmp_path / "raw")
        pages = len(srv.requests_for("/api/search"))
    assert pages == 3 * 2  # three searches (two listings and the download), two pages each
    by_item: dict[str, set[str]] = {}
    for record_id, aoi, square in listed:
        by_item.setdefault(re.sub(r"_\d+_\d+$", "", record_id), set()).add(aoi)
        assert aoi == f"ben_32633_{square[1][0] // 1000:.0f}_{square[1][1] // 1000:.0f}"
    assert by_item == {"S2A_MSIL2A_20170613T101031_R022_T33UUP": squares, small["id"]: {"ben_32633_420_5322"},
                       "S1A_IW_GRDH_1SDV_20170613T165043_33UUP": squares}  # fmt: skip
    assert small["id"] in {i for i, _, _ in listed}  # an item in one square keeps its id
    assert "S2A_MSIL2A_20170613T101031_R022_T33UUP_418_5320" in {i for i, _, _ in listed}
    ledger = read_ledger(tmp_path / "raw")
    assert summary.failed == 0 and len(ledger) == 13 and set(ledger["aoi"]) == squares
    for row in ledger[ledger["sensor"] == "s2"].itertuples():
        dest = tmp_path / "raw" / json.loads(row.assets)["B04"]
        record = json.loads(dest.with_name("B04.window.json").read_text())
        west_m, south_m = (float(v) * 1000 for v in row.aoi.split("_")[2:])
        assert record["square"]["bounds"] == [west_m, south_m, west_m + TILE_M, south_m + TILE_M]
        with rasterio.open(dest) as got:
            left, bottom, right, top = got.bounds
        if row.id != small["id"]:  # each square's window, with its margin
            assert (left, bottom, right, top) == (west_m - MARGIN_M, south_m - MARGIN_M, west_m + TILE_M + MARGIN_M,
                                                  south_m + TILE_M + MARGIN_M)  # fmt: skip


def _listing(source: SourceParams) -> list:
    """(record id, AOI, square) of every record a search yields."""
    from msgfm.ingest.sources import iter_items

    return [(r.id, r.aoi, r.square) for r in iter_items(source, limits=DownloadParams())]


def test_a_server_error_is_retried_and_a_missing_file_fails_its_item_by_name(scenes, tmp_path):
    with LoopbackServer(scenes) as srv:
        _served(srv, scenes, wrong_size=False)
        srv.fail("/B04.tif", "500")  # the first HEAD: a transient error, retried
        srv.fail("/vv.tif", "404", "404", "404")
        summary = _run(_source(srv), tmp_path / "raw")
        heads = [r for r in srv.requests_for("/vv.tif") if r[0] == "HEAD"]
    ledger = read_ledger(tmp_path / "raw").set_index("sensor")
    assert summary.failed == 1 and ledger.loc["s2", "status"] == "ok"
    assert "HTTP 404" in ledger.loc["s1", "error"] and "/vv.tif" in ledger.loc["s1", "error"]
    assert "sig=secret" not in ledger.loc["s1", "error"] and len(heads) == 1  # a 404 is not retried
