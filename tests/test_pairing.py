"""pair: chips per AOI and date, S1-S2 / RGB-DSM pairs in time, spatial-block splits, store contents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from coreg_world import copy_pipeline, pair_params, pipeline_root, two_aoi_world  # noqa: F401 (session fixture)

from msgfm.chips.cutting import MANIFEST_COLUMNS
from msgfm.chips.pairing import PairError, pair
from msgfm.chips.positions import chip_classes
from msgfm.chips.splits import assign_splits, blocks_touched
from msgfm.chips.store import MANIFEST_HASH_KEY, MASK_NODATA, ChipStore, ChipStoreError, open_accepted
from msgfm.geo.io import sha256_file
from msgfm.sensors import get_sensor
from msgfm.validation.pairs import build_pairs_table, split_clashes


@pytest.fixture(scope="module")
def built(pipeline_root):  # noqa: F811
    root = pipeline_root
    return root, pd.read_parquet(root / "data/manifest.parquet"), ChipStore(root / "data/chips")


def test_manifest_schema_and_counts(built):
    root, manifest, store = built
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["id"].is_unique
    assert set(manifest["sensor"]) == {"s1", "s2", "rgb", "dsm"}
    for sensor, group in manifest.groupby("sensor"):
        assert sorted(group["store_index"]) == list(range(store.count(sensor)))
    assert (manifest["nodata_fraction"] <= 0.5).all()
    assert np.isfinite(manifest[["mean", "std"]].to_numpy()).all()


def test_s1_paired_with_closest_s2_within_max_days(built):
    _, manifest, _ = built
    s1 = manifest[manifest["sensor"] == "s1"]
    partner_date = s1["partner_id"].str.extract(r"_(\d{8})_r")[0]
    by_date = dict(zip(s1["date"], partner_date, strict=False))
    assert by_date["2024-05-02"] == "20240501"  # 1 day
    assert by_date["2024-05-14"] == "20240511"  # 3 days, closer than 05-01 (13 days)
    late = s1[s1["date"] == "2024-08-01"]
    assert len(late) and not late["paired"].any() and late["partner_id"].isna().all()  # 42 days > max_days
    assert (s1.loc[s1["paired"], "partner_days"] <= 10).all()
    s2 = manifest[(manifest["sensor"] == "s2") & (manifest["date"] == "2024-06-20")]
    assert not s2["paired"].any()  # nobody chose it: kept as unpaired single-sensor samples
    rgb = manifest[manifest["sensor"] == "rgb"]
    assert rgb["paired"].all() and (rgb["partner_sensor"] == "dsm").all()


def test_partner_chip_is_same_place_and_index_points_to_it(built):
    _, manifest, _ = built
    by_id = manifest.set_index("id")
    for row in manifest[manifest["paired"]].itertuples():
        partner = by_id.loc[row.partner_id]
        assert (partner["row"], partner["col"], partner["grid"]) == (row.row, row.col, row.grid)
        assert partner["store_index"] == row.partner_index and partner["sensor"] == row.partner_sensor


def test_chips_equal_raster_windows(built):
    root, manifest, store = built
    size = store.chip_px
    paths = pd.read_parquet(root / "data/coreg/rasters.parquet").set_index("id")["path"]
    for sensor in ("s2", "s1", "rgb", "dsm"):
        row = manifest[manifest["sensor"] == sensor].iloc[3]
        with rasterio.open(root / "data/coreg" / paths[row["source_id"]]) as src:
            window = src.read()[:, row["row"] : row["row"] + size, row["col"] : row["col"] + size]
        chip = store.raw(sensor, row["store_index"])
        valid = store.mask(sensor, row["store_index"]) != MASK_NODATA
        np.testing.assert_array_equal(chip[:, valid], window[:, valid].astype(chip.dtype))
        # nodata holds the band mean (relative bands such as DSM height: the chip's own valid mean)
        mean, _ = get_sensor(sensor).stats(store.bands(sensor))
        for i, band in enumerate(store.bands(sensor)):
            fill = chip[i][valid].mean() if get_sensor(sensor).band(band).relative else mean[i]
            np.testing.assert_allclose(chip[i][~valid], np.asarray(fill).astype(chip.dtype), rtol=1e-5)
        normalised = store.read(sensor, [row["store_index"]])[0]
        np.testing.assert_allclose(
            normalised, get_sensor(sensor).normalise(chip, store.bands(sensor)), rtol=1e-5, atol=1e-5
        )


def test_labels_and_cloud_fraction(built):
    root, manifest, store = built
    with rasterio.open(root / "data/coreg/farm/landcover.tif") as src:
        lc = src.read(1)
    row = manifest[manifest["sensor"] == "s2"].iloc[0]
    label = store.labels(row["grid"], row["label_index"])
    np.testing.assert_array_equal(label, lc[row["row"] : row["row"] + 16, row["col"] : row["col"] + 16])
    codes, counts = np.unique(label[label != 0], return_counts=True)
    assert list(row["labels"]) == [int(c) for c, n in zip(codes, counts, strict=True) if n >= 0.05 * counts.sum()]
    s2 = manifest[manifest["sensor"] == "s2"]
    assert s2.loc[s2["date"] == "2024-05-11", "cloud_fraction"].max() > 0.2  # the cloudy date
    assert s2.loc[s2["date"] != "2024-05-11", "cloud_fraction"].max() == 0
    cloudy = s2.loc[s2["date"] == "2024-05-11"].sort_values("cloud_fraction").iloc[-1]
    mask = store.mask("s2", cloudy["store_index"])
    assert np.isin(mask, [1, 2]).mean() == pytest.approx(cloudy["cloud_fraction"])


def test_chip_classes_are_by_area_fraction_of_known_pixels():
    chip = np.zeros((10, 10), np.uint8)
    chip[:, :6] = 10  # 60 % of all pixels, 75 % of the known ones
    chip[:, 6:8] = 40  # 25 % of the known
    chip[0, 8] = 80  # 1 of 80 known pixels
    assert chip_classes(chip, 0.05) == [10, 40]
    assert chip_classes(chip, 0.0) == [10, 40, 80]  # 0: any pixel, the old behaviour
    assert chip_classes(chip, 0.3) == [10]
    assert chip_classes(np.zeros((4, 4), np.uint8), 0.05) == []


def test_splits_are_spatial_blocks_with_buffer(built):
    _, manifest, _ = built
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (split_clashes(manifest) == "").all()
    # the same place has the same split for every sensor and date
    assert (manifest.groupby(["aoi", "grid", "row", "col"])["split"].nunique() == 1).all()
    # footprints of different splits are at least buffer_m apart
    cfg = pair_params(built[0])
    boxes = {s: g[["minx", "miny", "maxx", "maxy"]].drop_duplicates().to_numpy() for s, g in manifest.groupby("split")}
    for a in boxes:
        for b in boxes:
            if a < b:
                gap_x = np.maximum(
                    boxes[a][:, None, 0] - boxes[b][None, :, 2], boxes[b][None, :, 0] - boxes[a][:, None, 2]
                )
                gap_y = np.maximum(
                    boxes[a][:, None, 1] - boxes[b][None, :, 3], boxes[b][None, :, 1] - boxes[a][:, None, 3]
                )
                assert (np.maximum(gap_x, gap_y) >= cfg.buffer_m - 1e-6).all()
    train = set().union(*manifest.loc[manifest["split"] == "train", "labels"].map(set))
    assert set().union(*manifest["labels"].map(set)) <= train


def test_assign_splits_turns_a_block_train_for_a_missing_class():
    """A class that only occurs in a held-out block forces that block into train."""
    cfg = pair_params(Path("."), val_fraction=0.25, test_fraction=0.25, block_m=100, buffer_m=1)
    footprints = {("a", "s10", r, c): (c * 100.0 + 10, r * 100.0 + 10, c * 100.0 + 90, r * 100.0 + 90)
                  for r in range(2) for c in range(2)}  # fmt: skip
    classes = {p: {10} for p in footprints}
    first = assign_splits(cfg, 0, footprints, {"a": (0.0, 0.0)}, classes)
    held_out = next(p for p, (s, _) in first.items() if s != "train")
    classes[held_out] = {70}
    second = assign_splits(cfg, 0, footprints, {"a": (0.0, 0.0)}, classes)
    assert second[held_out][0] == "train"
    assert sorted(s for s, _ in first.values()) == ["test", "train", "train", "val"]


@pytest.mark.parametrize("seed", range(5))
def test_assign_splits_gives_the_fine_grid_its_share_of_val_and_test(seed):
    """The fine grid covers 8 of 100 blocks: val and test still take 2 of those 8, whatever the seed."""
    cfg = pair_params(Path("."), val_fraction=0.25, test_fraction=0.25, block_m=100, buffer_m=0)
    footprints = {("a", "s10", r, c): (c * 100.0, r * 100.0, c * 100.0 + 100, r * 100.0 + 100)
                  for r in range(10) for c in range(10)}  # fmt: skip
    fine = {("a", "fine", r, c): (c * 50.0, r * 50.0, c * 50.0 + 50, r * 50.0 + 50)
            for r in range(4) for c in range(8)}  # fmt: skip
    splits = assign_splits(cfg, seed, {**footprints, **fine}, {"a": (0.0, 0.0)}, {})
    fine_blocks = {block: split for (aoi, grid, *_), (split, block) in splits.items() if grid == "fine"}
    assert len(fine_blocks) == 8
    assert sorted(fine_blocks.values()).count("val") == 2 and sorted(fine_blocks.values()).count("test") == 2
    coarse = [split for (_, grid, *_), (split, _) in splits.items() if grid == "s10"]
    assert coarse.count("val") == coarse.count("test") == 25  # 2 fine-grid blocks + 23 of the other 92 each


def test_same_seed_same_manifest(built, tmp_path):
    root, manifest, _ = built
    again = pair(
        pair_params(root, out_dir=tmp_path / "chips", manifest=tmp_path / "m.parquet"),
        coreg_dir=root / "data/coreg",
        coreg_gate=root / "data/gates/coreg.parquet",
        seed=0,
    )
    pd.testing.assert_frame_equal(again, manifest, check_dtype=False)
    assert _arrays(tmp_path / "chips") == _arrays(root / "data/chips")  # index.json names the other manifest path


def _arrays(store: Path) -> dict[str, bytes]:
    """The bytes of every shard array of a store, by path inside it."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*.npy"))}


@pytest.mark.slow  # co-registers two AOIs and starts a local Ray instance (30-60 s)
def test_aois_as_ray_tasks_write_the_same_store(tmp_path):
    """ray.data_workers: 2 scans and cuts each AOI as a Ray task: the same manifest, shards and index as in process."""
    from msgfm.config import CoregisterParams, GatesParams, RayParams
    from msgfm.coreg.stage import coregister
    from msgfm.validation.coreg import validate_coreg

    root = two_aoi_world(tmp_path / "world")
    cfg = CoregisterParams()
    coregister(
        cfg, ledger=root / "data/raw/acquisitions.parquet", raw_gate=root / "data/gates/raw.parquet",
        raw_dir=root / "data/raw", out_dir=root / "data/coreg", report=root / "data/reports/coregister.json",
    )  # fmt: skip
    gate = validate_coreg(
        root / "data/coreg", cfg, GatesParams(), gates_dir=root / "data/gates", reports_dir=root / "data/reports"
    )
    gate.raise_if_failed()
    stores = {}
    for name, ray_cfg in (("serial", None), ("ray", RayParams(data_workers=2, num_cpus=2))):
        params = pair_params(tmp_path / name, manifest=tmp_path / "manifest.parquet")  # index.json names it
        manifest = pair(
            params, coreg_dir=root / "data/coreg", coreg_gate=root / "data/gates/coreg.parquet", ray_cfg=ray_cfg
        )
        stores[name] = (manifest, _arrays(params.out_dir), (params.out_dir / "index.json").read_bytes())
    (manifest, arrays, index), (on_ray, ray_arrays, ray_index) = stores["serial"], stores["ray"]
    assert set(manifest["aoi"]) == {"farm", "town"} and manifest["paired"].any()
    assert [s["aoi"] for s in json.loads(index)["shards"]] == ["farm", "town"]  # one shard per AOI, in AOI order
    pd.testing.assert_frame_equal(on_ray, manifest)
    assert sorted(ray_arrays) == sorted(arrays) and [p for p in arrays if ray_arrays[p] != arrays[p]] == []
    assert ray_index == index
    store = ChipStore(tmp_path / "ray/data/chips")
    farm = manifest[(manifest["aoi"] == "farm") & (manifest["sensor"] == "s2")]
    assert store.shard_ranges("s2")[0] == range(0, len(farm))  # store indices run on across the shards


def test_missing_coreg_outputs_name_the_file(tmp_path):
    with pytest.raises(PairError, match="rasters.parquet: not found"):
        pair(pair_params(tmp_path), coreg_dir=tmp_path / "coreg", coreg_gate=tmp_path / "coreg.parquet")


def test_a_manifest_not_written_with_the_store_is_a_clear_error(built, tmp_path):
    """The store's index.json records its manifest's hash; a reader refuses any other manifest beside it."""
    root = copy_pipeline(built[0], tmp_path)
    manifest_path, chips = root / "data/manifest.parquet", root / "data/chips"
    accepted = root / "data/gates/pairs.parquet"
    index = json.loads((chips / "index.json").read_text())
    assert index[MANIFEST_HASH_KEY] == sha256_file(manifest_path)
    manifest = pd.read_parquet(manifest_path)
    pd.DataFrame({"id": manifest["id"], "accepted": True}).to_parquet(accepted)
    assert len(open_accepted(chips, manifest_path, accepted)[1]) == len(manifest)  # the pair pair wrote opens

    original = manifest_path.read_bytes()
    manifest.iloc[::-1].to_parquet(manifest_path, index=False)  # the same chips, but not the file pair wrote
    message = r"data/manifest.parquet does not match \S*data/chips/index.json: re-run `dvc repro pair`"
    with pytest.raises(ChipStoreError, match=message):
        open_accepted(chips, manifest_path, accepted)
    with pytest.raises(ChipStoreError, match=message):
        build_pairs_table(manifest_path, chips)

    manifest_path.write_bytes(original)  # the right manifest, but a store that recorded none
    del index[MANIFEST_HASH_KEY]
    (chips / "index.json").write_text(json.dumps(index))
    with pytest.raises(ChipStoreError, match=message):
        open_accepted(chips, manifest_path, accepted)


def test_a_chip_on_a_block_line_touches_only_its_own_block():
    # a 640 m chip from 320 to 960 m ends on the line of the 960 m lattice: with no buffer it belongs to
    # block 0 alone; any buffer reaches the neighbour; one metre over the line overlaps it.
    assert blocks_touched((320.0, 0.0, 960.0, 640.0), 960.0, 0.0) == {(0, 0)}
    assert blocks_touched((320.0, 0.0, 960.0, 640.0), 960.0, 1.0) == {(0, -1), (1, -1), (0, 0), (1, 0)}
    assert blocks_touched((960.0, 0.0, 1600.0, 640.0), 960.0, 0.0) == {(1, 0)}
    assert blocks_touched((321.0, 0.0, 961.0, 640.0), 960.0, 0.0) == {(0, 0), (1, 0)}


def test_split_clashes_are_shared_area_not_a_shared_edge():
    manifest = pd.DataFrame(
        {
            "crs": ["EPSG:32632"] * 3,
            "minx": [0.0, 640.0, 639.0],
            "miny": [0.0, 0.0, 0.0],
            "maxx": [640.0, 1280.0, 1279.0],
            "maxy": [640.0, 640.0, 640.0],
            "split": ["train", "test", "val"],
        }
    )
    # train and test share the edge x = 640 only; val reaches one metre into train and overlaps test
    assert split_clashes(manifest).tolist() == ["val", "val", "test,train"]
