"""The chip store: shards of preallocated memmaps written chip by chip, random reads in the caller's order across
shards, streaming shard by shard, clear errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from msgfm.chips.store import (
    MASK_CLOUD,
    MASK_NODATA,
    MASK_VALID,
    ChipStore,
    ChipStoreError,
    ChipStoreWriter,
    SensorArray,
)
from msgfm.sensors import S2_L2A_BANDS, get_sensor


@pytest.fixture
def store_dir(tmp_path):
    """A store of two shards, 5 S2 chips (3 + 2) and 3 S1 chips (only in the first), values encoding their store
    index, and 2 label chips (one per shard)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "chips"
    writer = ChipStoreWriter(root, 8)
    first = writer.shard(
        "00000",
        [SensorArray("s2", 3, S2_L2A_BANDS, "uint16"), SensorArray("s1", 3, ("VV", "VH"), "float32")],
        {"s10": 1, "fine": 0},
        aoi="a",
    )
    second = writer.shard("00001", [SensorArray("s2", 2, S2_L2A_BANDS, "uint16")], {"s10": 1, "fine": 0}, aoi="b")
    for i in range(5):
        mask = np.full((8, 8), MASK_VALID, np.uint8)
        mask[0, :] = MASK_NODATA
        mask[1, :2] = MASK_CLOUD
        shard, local = (first, i) if i < 3 else (second, i - 3)
        shard.write("s2", local, np.full((12, 8, 8), 1000 + i, np.uint16), mask)
    for i in range(3):
        first.write("s1", i, rng.normal(-12, 3, (2, 8, 8)).astype(np.float32), np.zeros((8, 8), np.uint8))
    first.write_label("s10", 0, np.full((8, 8), 40, np.uint8))
    second.write_label("s10", 0, np.full((8, 8), 80, np.uint8))
    writer.commit([first.close(), second.close()], {"chips": 8})
    return root


def test_roundtrip_in_callers_order(store_dir):
    store = ChipStore(store_dir)
    assert set(store.sensors) == {"s2", "s1"} and store.chip_px == 8 and store.count("s2") == 5
    assert store.bands("s2") == S2_L2A_BANDS
    raw = store.raw("s2", [4, 0, 2, 3])  # across both shards
    assert raw.dtype == np.uint16 and raw.shape == (4, 12, 8, 8)
    assert [int(r[0, 5, 5]) for r in raw] == [1004, 1000, 1002, 1003]
    assert store.raw("s2", [4, 3])[:, 0, 5, 5].tolist() == [1004, 1003]  # within one shard
    assert store.raw("s2", 3).shape == (12, 8, 8) and int(store.raw("s2", np.int64(1))[0, 5, 5]) == 1001
    assert store.raw("s2", []).shape == (0, 12, 8, 8)
    assert isinstance(store.shard_array("s2", 1), np.memmap)  # reads go through the page cache, not into RAM
    assert store.shard_array("s2", 1).shape == (2, 12, 8, 8)  # no array holds the whole store


def test_streaming_shard_by_shard(store_dir):
    store = ChipStore(store_dir)
    assert store.shard_ranges("s2") == [range(0, 3), range(3, 5)]
    assert store.shard_ranges("s1") == [range(0, 3)]  # the second shard has no S1 chips
    streamed = np.concatenate([store.raw("s2", rows) for rows in store.shard_ranges("s2")])
    assert streamed[:, 0, 5, 5].tolist() == [1000, 1001, 1002, 1003, 1004]
    assert [s["aoi"] for s in store.index["shards"]] == ["a", "b"]


def test_a_pickled_store_leaves_its_mapped_shards_behind(store_dir):
    store = ChipStore(store_dir)
    expected = store.read("s2", [4, 0])
    copy = pickle.loads(pickle.dumps(store))  # what a spawned DataLoader or Ray worker gets
    assert len(pickle.dumps(store)) < 8 * 12 * 8 * 8  # not even one shard's pixels travel
    np.testing.assert_array_equal(copy.read("s2", [4, 0]), expected)


def test_out_of_range_indices_name_the_array(store_dir):
    store = ChipStore(store_dir)
    with pytest.raises(IndexError, match="s2 has no row 5 .it has 5"):
        store.raw("s2", [0, 5])
    with pytest.raises(IndexError, match="s1_mask has no row -1"):
        store.mask("s1", [-1])


def test_nodata_filled_with_band_mean_so_normalised_zero(store_dir):
    store = ChipStore(store_dir)
    x = store.read("s2", [1])
    assert x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_allclose(x[0, :, 0, :], 0.0, atol=2e-3)  # the nodata row: band mean -> 0 after normalising
    expected = get_sensor("s2").normalise(np.full((12, 8, 8), 1001, np.float32), S2_L2A_BANDS)
    np.testing.assert_allclose(x[0, :, 4:, :], expected[:, 4:, :], rtol=1e-5)
    mask = store.mask("s2", [1])[0]
    assert (mask[0] == MASK_NODATA).all() and (mask[1, :2] == MASK_CLOUD).all() and mask[2:].max() == MASK_VALID


def test_labels_by_index(store_dir):
    store = ChipStore(store_dir)
    labels = store.labels("s10", [1, 0])
    assert labels.shape == (2, 8, 8) and labels[0, 0, 0] == 80 and labels[1, 0, 0] == 40
    assert store.labels("fine", []).shape == (0, 8, 8) and store.shard_ranges("labels_fine") == []


def test_commit_replaces_an_old_store_and_leaves_no_partial(store_dir):
    writer = ChipStoreWriter(store_dir, 4)
    shard = writer.shard("00000", [SensorArray("dsm", 1, ("height",), "float32")], {})
    shard.write("dsm", 0, np.ones((1, 4, 4), np.float32), np.zeros((4, 4), np.uint8))
    writer.commit([shard.close()])
    store = ChipStore(store_dir)
    assert store.sensors == ("dsm",) and not (store_dir.parent / ".chips.partial").exists()
    assert sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*.npy")) == [
        "00000/dsm.npy",
        "00000/dsm_mask.npy",
    ]


def test_shards_with_other_bands_are_refused(tmp_path):
    writer = ChipStoreWriter(tmp_path / "chips", 4)
    a = writer.shard("00000", [SensorArray("s1", 1, ("VV", "VH"), "float32")], {})
    b = writer.shard("00001", [SensorArray("s1", 1, ("VV",), "float32")], {})
    with pytest.raises(ChipStoreError, match="00001: s1 bands"):
        writer.commit([a.close(), b.close()])
    assert not (tmp_path / "chips").exists()


def test_errors_name_the_problem(tmp_path, store_dir):
    with pytest.raises(ChipStoreError, match="no chip store here"):
        ChipStore(tmp_path / "nowhere")
    store = ChipStore(store_dir)
    with pytest.raises(KeyError, match="no sensor 'rgb'"):
        store.read("rgb", [0])
    index = json.loads((store_dir / "index.json").read_text())
    index["sensors"]["s1"]["count"] = 99
    (store_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(ChipStoreError, match="index.json: its shards hold 3 rows of s1, its count is 99"):
        ChipStore(store_dir)
    index["sensors"]["s1"]["count"] = 3
    (store_dir / "index.json").write_text(json.dumps(index))
    np.save(store_dir / "00000" / "s1.npy", np.zeros((2, 2, 8, 8), np.float32))  # a shard file replaced
    with pytest.raises(ChipStoreError, match=r"00000/s1.npy: \(2, 2, 8, 8\) float32 does not match index.json"):
        ChipStore(store_dir).raw("s1", [0])
