"""AOIs of items without `msgfm:aoi` outside a bbox search: footprints grouped by overlap (msgfm.ingest.aois)."""

from __future__ import annotations

from shapely.geometry import box

from msgfm.config import SourceParams
from msgfm.ingest.aois import footprint, group_names, group_square, overlap_groups
from msgfm.ingest.records import failed_record
from msgfm.ingest.sources import grouped_by_overlap

CFG = SourceParams(aoi="ben", aoi_tile_m=10000)
S2 = [14.99, 48.00, 15.01, 48.01]  # about 1.5 x 1.1 km, centred on UTM 33's 500 km easting
S1 = [14.97, 47.995, 15.005, 48.015]  # the S1's footprint: its centre lies west of the 500 km easting


def test_footprints_sharing_area_form_one_group_and_touching_ones_do_not():
    east = [15.01, 48.00, 15.03, 48.01]  # shares only the S2's east edge
    far = [11.0, 45.0, 11.01, 45.01]
    assert overlap_groups([box(*b) for b in (S2, east, far)]) == [0, 1, 2]
    wide = [14.98, 47.995, 15.02, 48.015]
    assert overlap_groups([box(*b) for b in (S2, east, far, wide)]) == [0, 0, 1, 0]  # `wide` chains both: one group
    assert overlap_groups([]) == []


def test_a_pair_straddling_a_square_edge_is_one_aoi_named_by_its_corner_in_any_order():
    from msgfm.ingest.aois import aoi_square

    assert aoi_square(S2, CFG)[1][0] == 500_000 and aoi_square(S1, CFG)[1][0] == 490_000  # the centre rule splits
    s2 = _record("s2_a", S2)
    s1 = _record("s1_a", S1)
    far = _record("s2_far", [11.0, 45.0, 11.01, 45.01])
    one = grouped_by_overlap([s2, s1, far], CFG)
    other = grouped_by_overlap([far, s1, s2], CFG)
    assert {r.id: r.aoi for r in one} == {r.id: r.aoi for r in other}
    names = {r.id: r.aoi for r in one}
    assert names["s2_a"] == names["s1_a"] == "ben_32633_497_5315" and names["s2_far"].startswith("ben_32632_")
    crs, (west, south, east, north) = one[0].square
    assert crs == "EPSG:32633" and west < 500_000 < east and 2500 < east - west < 3000  # the union, in metres


# Two descending IW swaths side by side, tilted as Sentinel-1's ground tracks are (about 12 degrees off north at
# 48 N): their bboxes share a 0.1-degree strip, their polygons share nothing (a 0.02-degree gap between them).
SWATH_A = [[14.0, 47.0], [14.3, 47.0], [14.5, 48.0], [14.2, 48.0], [14.0, 47.0]]
SWATH_B = [[14.32, 47.0], [14.62, 47.0], [14.82, 48.0], [14.52, 48.0], [14.32, 47.0]]


def test_swaths_whose_bboxes_overlap_but_polygons_do_not_are_two_aois():
    a, b = _swath("s1_a", SWATH_A), _swath("s1_b", SWATH_B)
    assert a.bbox[2] > b.bbox[0]  # the bboxes do overlap: a bbox rule would merge them
    out = {r.id: r.aoi for r in grouped_by_overlap([a, b], CFG)}
    assert out["s1_a"] != out["s1_b"]
    assert out == {r.id: r.aoi for r in grouped_by_overlap([b, a], CFG)}  # stable in any order
    inside = _swath("s2_c", [[14.5, 47.4], [14.6, 47.4], [14.6, 47.5], [14.5, 47.5], [14.5, 47.4]])
    grouped = {r.id: r.aoi for r in grouped_by_overlap([a, b, inside], CFG)}
    assert grouped["s2_c"] == grouped["s1_b"] != grouped["s1_a"]  # inside swath B's polygon only


def test_a_footprint_without_a_usable_geometry_is_its_bbox_clipped_to_the_search_box():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    assert footprint(None, [0, 0, 2, 1], None).equals(box(0, 0, 2, 1))
    assert footprint({"type": "Point", "coordinates": [0, 0]}, [0, 0, 2, 1], [1, 0, 3, 1]).equals(box(1, 0, 2, 1))
    assert footprint(bowtie, [0, 0, 1, 1], None).area > 0  # repaired (make_valid), not dropped
    swath = {"type": "Polygon", "coordinates": [SWATH_A]}
    assert footprint(swath, [14.0, 47.0, 14.5, 48.0], [14.0, 47.0, 14.1, 47.1]).area < 0.1 * 0.1


def test_groups_whose_corners_share_a_kilometre_get_distinct_stable_names():
    a, b = [15.001, 48.001, 15.002, 48.002], [15.004, 48.0015, 15.005, 48.0025]  # 150 m apart, disjoint
    squares = [group_square([a]), group_square([b])]
    assert group_names(squares, CFG) == ["ben_32633_500_5316", "ben_32633_500_5316_2"]
    assert group_names(squares[::-1], CFG) == ["ben_32633_500_5316_2", "ben_32633_500_5316"]


def test_items_with_an_aoi_or_an_error_keep_theirs():
    named = _record("s2_named", S2, square=False)
    broken = failed_record("s1_broken", "cannot read item")
    out = grouped_by_overlap([named, broken, _record("s1_a", S1)], CFG)
    assert [r.aoi for r in out[:2]] == ["farm", None] and out[2].aoi.startswith("ben_32633_")


def _swath(iid: str, ring: list[list[float]]):
    """A derived-AOI record whose STAC geometry is `ring` and bbox its bounds, as Earth Search publishes S1."""
    rec = _record(
        iid, [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)]
    )
    rec.item["geometry"] = {"type": "Polygon", "coordinates": [ring]}
    return rec


def _record(iid: str, bbox: list[float], square: bool = True):
    """An ItemRecord as record_from_item makes it: a derived AOI (square set) unless it has `msgfm:aoi`."""
    from msgfm.ingest.records import record_from_item

    props = {"datetime": "2024-05-01T10:00:00Z", "msgfm:sensor": "s2"} | ({} if square else {"msgfm:aoi": "farm"})
    item = {"type": "Feature", "id": iid, "bbox": bbox, "properties": props, "assets": {"B02": {"href": "B02.tif"}}}
    return record_from_item(item, f"/tmp/{iid}.json", CFG)


def test_folder_footprints_are_raster_outlines_so_tilted_neighbours_stay_apart(tmp_path):
    """Two 100 km UTM strips 500 m apart, 300 km east of the central meridian: grid convergence (~3 degrees)
    tilts them in degrees, so their WGS84 bboxes overlap by ~5 km while the outlines keep the 500 m gap."""
    import json

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from msgfm.ingest.sources import iter_items

    for name, west in (("strip_a", 790_000.0), ("strip_b", 800_500.0)):
        tif = tmp_path / name / "VV.tif"
        tif.parent.mkdir()
        profile = {"driver": "GTiff", "width": 10, "height": 100, "count": 1, "dtype": "float32", "crs": "EPSG:32633"}
        with rasterio.open(tif, "w", transform=from_origin(west, 5_400_000.0, 1000.0, 1000.0), **profile) as dst:
            dst.write(np.ones((1, 100, 10), "float32"))
        meta = {"id": name, "sensor": "s1", "asset": "VV", "datetime": "2024-05-01T05:00:00Z"}
        tif.with_suffix(".json").write_text(json.dumps(meta))
    cfg = SourceParams(kind="folder", path=tmp_path, aoi="ben", aoi_tile_m=10000)
    records = {r.id: r for r in iter_items(cfg)}
    a, b = records["strip_a"], records["strip_b"]
    assert not a.error and not b.error
    assert a.bbox[2] - b.bbox[0] > 0.03  # the bboxes overlap by over 2 km of longitude
    ring = a.item["geometry"]["coordinates"][0]
    assert footprint(a.item["geometry"], a.bbox, None).area < 0.99 * box(*a.bbox).area  # the tilted outline
    assert len(ring) > 5 and ring[0] == ring[-1]
    assert a.aoi != b.aoi  # a bbox rule would make them one AOI
