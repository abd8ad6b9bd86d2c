"""Atomic writes: nothing half-written under a final name, and no temporary file left behind."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from msgfm.geo.io import atomic_path, atomic_write_bytes, write_cog


def test_failed_write_leaves_neither_target_nor_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_temp_left_by_a_killed_run_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "B02.tif"
    stale = tmp_path / ".B02.tif.k1ll3d.part"  # what SIGKILL leaves: the finally clause never ran
    stale.write_bytes(b"partial")
    resumable = tmp_path / "B02.tif.part"  # an HTTP download's resumable partial is not ours to remove
    resumable.write_bytes(b"resume me")
    atomic_write_bytes(target, b"complete")
    assert target.read_bytes() == b"complete" and not stale.exists() and resumable.exists()
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_write_cog_is_deterministic_and_georeferenced(tmp_path: Path) -> None:
    data = np.arange(2 * 300 * 300, dtype=np.uint16).reshape(2, 300, 300)
    transform = Affine(10, 0, 500000, 0, -10, 5300000)
    a = write_cog(tmp_path / "a.tif", data, crs="EPSG:32632", transform=transform, nodata=0, band_names=["B04", "B08"])
    b = write_cog(tmp_path / "b.tif", data, crs="EPSG:32632", transform=transform, nodata=0, band_names=["B04", "B08"])
    assert a.read_bytes() == b.read_bytes()
    with rasterio.open(a) as src:
        assert src.crs.to_epsg() == 32632 and src.transform == transform and src.descriptions == ("B04", "B08")
        np.testing.assert_array_equal(src.read(), data)
