"""Earth Search's sentinel-1-grd as published (tests/data/earth-search-s1-grd/README.md): refused, saying why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from msgfm.config import DownloadParams, SourceParams
from msgfm.ingest.download import download, read_ledger
from msgfm.ingest.sources import iter_items

ITEM = Path(__file__).parent / "data" / "earth-search-s1-grd" / "item.json"


def _catalog(tmp_path: Path) -> SourceParams:
    """A static catalog holding the one real-shaped item, its collection mapped to s1 as an Earth Search run does."""
    folder = tmp_path / "cat" / "item"
    folder.mkdir(parents=True)
    shutil.copyfile(ITEM, folder / "item.json")
    links = [{"rel": "item", "href": "./item/item.json", "type": "application/geo+json"}]
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "es", "description": "earth search s1", "links": links}
    (tmp_path / "cat" / "catalog.json").write_text(json.dumps(catalog))
    return SourceParams(href=str(tmp_path / "cat" / "catalog.json"), collections={"s1": "sentinel-1-grd"})


def test_the_lower_case_keys_map_to_vv_vh_and_the_swath_polygon_is_the_footprint(tmp_path):
    (record,) = iter_items(_catalog(tmp_path))
    assert not record.error and record.sensor == "s1"
    assert set(record.assets) == {"VV", "VH"}  # the XML annotations and the thumbnail are not bands
    assert record.item["properties"]["sar:product_type"] == "GRD"


def test_s3_requester_pays_grd_fails_its_item_naming_the_bucket_and_the_way_out(tmp_path):
    raw = tmp_path / "raw"
    summary = download(_catalog(tmp_path), DownloadParams(out_dir=raw, retries=0), report_path=None, progress=False)
    (row,) = read_ledger(raw).to_dict("records")
    assert summary.failed == 1 and row["status"] == "failed"
    assert "unsupported href scheme in s3://sentinel-s1-l1c/" in row["error"]
    assert "requester-pays" in row["error"] and "sentinel-1-rtc" in row["error"]
    assert not list(raw.rglob("*.tif"))
