"""AOIs of items without `msgfm:aoi` outside a bbox search: footprints grouped by overlap (msgfm.ingest.aois)."""

from __future__ import annotations

from msgfm.config import SourceParams
from msgfm.ingest.aois import group_names, group_square, overlap_groups
from msgfm.ingest.records import failed_record
from msgfm.ingest.sources import grouped_by_overlap

CFG = SourceParams(aoi="ben", aoi_tile_m=10000)
S2 = [14.99, 48.00, 15.01, 48.01]  # about 1.5 x 1.1 km, centred on UTM 33's 500 km easting
S1 = [14.97, 47.995, 15.005, 48.015]  # the S1's footprint: its centre lies west of the 500 km easting


def test_footprints_sharing_area_form_one_group_and_touching_ones_do_not():
    east = [15.01, 48.00, 15.03, 48.01]  # shares only the S2's east edge
    far = [11.0, 45.0, 11.01, 45.01]
    assert overlap_groups([S2, east, far]) == [0, 1, 2]
    wide = [14.98, 47.995, 15.02, 48.015]
    assert overlap_groups([S2, east, far, wide]) == [0, 0, 1, 0]  # `wide` overlaps both: a chain, one group
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


def _record(iid: str, bbox: list[float], square: bool = True):
    """An ItemRecord as record_from_item makes it: a derived AOI (square set) unless it has `msgfm:aoi`."""
    from msgfm.ingest.records import record_from_item

    props = {"datetime": "2024-05-01T10:00:00Z", "msgfm:sensor": "s2"} | ({} if square else {"msgfm:aoi": "farm"})
    item = {"type": "Feature", "id": iid, "bbox": bbox, "properties": props, "assets": {"B02": {"href": "B02.tif"}}}
    return record_from_item(item, f"/tmp/{iid}.json", CFG)
