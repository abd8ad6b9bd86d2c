"""The chip store: preallocated memmaps written chip by chip, random reads in the caller's order, clear errors."""

from __future__ import annotations

import json

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
    """A store with 5 S2 and 3 S1 chips of 8 px whose values encode their index, and 2 label chips."""
    rng = np.random.default_rng(0)
    root = tmp_path / "chips"
    writer = ChipStoreWriter(
        root,
        8,
        [SensorArray("s2", 5, S2_L2A_BANDS, "uint16"), SensorArray("s1", 3, ("VV", "VH"), "float32")],
        {"s10": 2, "fine": 0},
    )
    for i in range(5):
        mask = np.full((8, 8), MASK_VALID, np.uint8)
        mask[0, :] = MASK_NODATA
        mask[1, :2] = MASK_CLOUD
        writer.write("s2", i, np.full((12, 8, 8), 1000 + i, np.uint16), mask)
    for i in range(3):
        writer.write("s1", i, rng.normal(-12, 3, (2, 8, 8)).astype(np.float32), np.zeros((8, 8), np.uint8))
    writer.write_label("s10", 0, np.full((8, 8), 40, np.uint8))
    writer.write_label("s10", 1, np.full((8, 8), 80, np.uint8))
    writer.commit({"chips": 8})
    return root


def test_roundtrip_in_callers_order(store_dir):
    store = ChipStore(store_dir)
    assert set(store.sensors) == {"s2", "s1"} and store.chip_px == 8 and store.count("s2") == 5
    assert store.bands("s2") == S2_L2A_BANDS
    raw = store.raw("s2", [4, 0, 2])
    assert raw.dtype == np.uint16 and raw.shape == (3, 12, 8, 8)
    assert [int(r[0, 5, 5]) for r in raw] == [1004, 1000, 1002]
    assert store.raw("s2", 3).shape == (12, 8, 8)
    assert isinstance(store.array("s2"), np.memmap)  # reads go through the page cache, not into RAM up front


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
    assert store.array("labels_fine").shape == (0, 8, 8)


def test_commit_replaces_an_old_store_and_leaves_no_partial(store_dir):
    writer = ChipStoreWriter(store_dir, 4, [SensorArray("dsm", 1, ("height",), "float32")], {})
    writer.write("dsm", 0, np.ones((1, 4, 4), np.float32), np.zeros((4, 4), np.uint8))
    writer.commit()
    store = ChipStore(store_dir)
    assert store.sensors == ("dsm",) and not (store_dir.parent / ".chips.partial").exists()
    assert not (store_dir / "s2.npy").exists()


def test_errors_name_the_problem(tmp_path, store_dir):
    with pytest.raises(ChipStoreError, match="no chip store here"):
        ChipStore(tmp_path / "nowhere")
    store = ChipStore(store_dir)
    with pytest.raises(KeyError, match="no sensor 'rgb'"):
        store.read("rgb", [0])
    index = json.loads((store_dir / "index.json").read_text())
    index["arrays"]["s1"]["shape"][0] = 99
    (store_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(ChipStoreError, match="does not match index.json"):
        ChipStore(store_dir).raw("s1", [0])
