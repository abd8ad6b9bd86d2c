"""SpaceNet-style PAN/MS GeoTIFF pairs for pan-sharpening, with Wald's protocol.

Publisher's layout (SpaceNet 2-5, https://spacenet.ai/datasets/, AWS open data `s3://spacenet-dataset/`,
licence CC-BY-SA-4.0): one folder per product under an AOI folder, one tile per file, tiles matched by
the `<AOI>_img<N>` id::

    ROOT/                                   e.g. AOI_2_Vegas_Train/
      PAN/PAN_AOI_2_Vegas_img1.tif          1 band, WorldView-3 panchromatic, about 0.3 m
      MS/MS_AOI_2_Vegas_img1.tif            4 or 8 bands, 4x coarser (about 1.24 m)

SpaceNet's own archives name the multispectral folder and prefix `MUL` (`MUL/MUL_AOI_2_Vegas_img1.tif`);
both `MS` and `MUL` are accepted. Values are 11-bit digital numbers stored as uint16; samples are
divided by 2047 (`bit_depth=11`) so they lie in 0..1, the data range the pan-sharpening metrics assume.

Wald's protocol (Wald et al. 1997, "Fusion of satellite images of different spatial resolutions:
assessing the quality of resulting images", PE&RS 63(6)): there is no high-resolution MS to compare
against, so both inputs are degraded by the resolution ratio r (PAN -> PAN/r on the MS grid, MS -> MS/r)
and the original MS is the target. Degradation is a box filter (pixel averaging, rasterio's "average"
resampling), the common simplification of the MTF-matched filter. The MS is cropped to a multiple of r
first. `protocol="full"` instead returns the native PAN and MS without a target (full-resolution use).

SpaceNet defines no pan-sharpening split; tiles are assigned to train/val/test (80/10/10) by a hash of
the tile id, so the assignment is stable whatever subset of tiles is on disk.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from rasterio.warp import Resampling, reproject

from msgfm.datasets.benchmarks._common import (
    BenchmarkDataError,
    BenchmarkDataset,
    Sample,
    Transform,
    georeference,
    open_profile,
    read_with_profile,
    require_dir,
)
from msgfm.sensors import WORLDVIEW_MS

MS_FOLDERS: tuple[str, ...] = ("MS", "MUL")
"""Accepted names of the multispectral folder (and file prefix)."""

MS_BAND_NAMES: dict[int, tuple[str, ...]] = {
    4: ("Blue", "Green", "Red", "NIR1"),
    8: WORLDVIEW_MS.band_names,
}
"""WorldView-2/3 multispectral band names (the registry's, msgfm.sensors.WORLDVIEW_MS) by band count, in file order."""

SPLIT_FRACTIONS: dict[str, tuple[float, float]] = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
"""Each split's interval of the tile-id hash mapped to [0, 1)."""

_TILE = re.compile(r"^PAN_(?P<tile>.+)\.tif$")


def hash_fraction(tile: str) -> float:
    """A stable number in [0, 1) from a tile id (SHA-1), used to assign the tile to a split."""
    return int(hashlib.sha1(tile.encode()).hexdigest()[:8], 16) / 2**32


def block_average(image: np.ndarray, ratio: int) -> np.ndarray:
    """(C, H, W) -> (C, H/r, W/r) by averaging r x r blocks; H and W must be multiples of r."""
    c, h, w = image.shape
    return image.reshape(c, h // ratio, ratio, w // ratio, ratio).mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


class SpaceNetPansharpen(BenchmarkDataset):
    """PAN/MS tile pairs -> Wald: {"pan": (1,h,w), "ms": (C,h/r,w/r), "target": (C,h,w)}; full: {"pan", "ms"};
    both with the tile id (`id`) and the georeference of the (cropped) MS grid (`crs`, `bounds`).

    h x w is the MS tile cropped to a multiple of the ratio r, which is taken from the two rasters' pixel
    sizes (it must be a whole number within 5 %) unless given.
    """

    name = "spacenet_pansharpen"
    task = "pansharpening"
    inputs: ClassVar[dict[str, str | None]] = {"pan": "wv_pan", "ms": "wv_ms"}
    target_key = "target"
    target_sensor = "wv_ms"
    splits = ("train", "val", "test", "all")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        protocol: str = "wald",
        ratio: int | None = None,
        bit_depth: int | None = 11,
        transforms: Transform | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if protocol not in ("wald", "full"):
            raise BenchmarkDataError(f"spacenet_pansharpen: protocol must be 'wald' or 'full', got {protocol!r}")
        self.protocol = protocol
        self.ratio = ratio
        self.scale = 1.0 if bit_depth is None else float(2**bit_depth - 1)
        hint = "expected PAN/PAN_<AOI>_img<N>.tif and MS/MS_<AOI>_img<N>.tif (or MUL/MUL_...) under the root"
        self.pan_dir = require_dir(self.root / "PAN", "spacenet_pansharpen", hint)
        ms_dirs = [self.root / name for name in MS_FOLDERS if (self.root / name).is_dir()]
        if not ms_dirs:
            raise BenchmarkDataError(f"spacenet_pansharpen: no MS/ or MUL/ folder in {self.root}; {hint}")
        self.ms_dir = ms_dirs[0]
        self.tiles: list[str] = []
        for pan in sorted(self.pan_dir.glob("PAN_*.tif")):
            tile = _TILE.match(pan.name)["tile"]
            lo, hi = SPLIT_FRACTIONS.get(split, (0.0, 1.0))
            if lo <= hash_fraction(tile) < hi:
                if not self.ms_path(tile).is_file():
                    raise BenchmarkDataError(f"SpaceNet tile {tile}: MS image missing (expected {self.ms_path(tile)})")
                self.tiles.append(tile)
        if not self.tiles:
            raise BenchmarkDataError(f"spacenet_pansharpen: no {split} tiles under {self.root}; {hint}")
        first = self.ms_path(self.tiles[0])
        self.ms_bands = open_profile(first, f"SpaceNet tile {self.tiles[0]}: MS image")["count"]
        if self.ms_bands not in MS_BAND_NAMES:
            raise BenchmarkDataError(f"SpaceNet: {first} has {self.ms_bands} bands, expected 4 or 8")
        ms_names = MS_BAND_NAMES[self.ms_bands]
        self.band_names = {"pan": ("PAN",), "ms": ms_names} | ({"target": ms_names} if protocol == "wald" else {})

    def ms_path(self, tile: str) -> Path:
        """Path of a tile's multispectral image (prefix = folder name, MS or MUL)."""
        return self.ms_dir / f"{self.ms_dir.name}_{tile}.tif"

    def __len__(self) -> int:
        return len(self.tiles)

    def _ratio(self, tile: str, pan_profile: dict, ms_profile: dict) -> int:
        """The PAN/MS resolution ratio: given, or the ratio of pixel widths rounded to a whole number."""
        if self.ratio is not None:
            return self.ratio
        exact = abs(ms_profile["transform"].a) / abs(pan_profile["transform"].a)
        ratio = round(exact)
        if ratio < 2 or abs(exact - ratio) > 0.05 * ratio:
            raise BenchmarkDataError(
                f"SpaceNet tile {tile}: MS/PAN pixel size ratio {exact:.3f} is not a whole number >= 2; pass ratio="
            )
        return ratio

    def load(self, index: int) -> Sample:
        """Read one PAN/MS pair and apply the protocol."""
        tile = self.tiles[index]
        pan, pan_profile = read_with_profile(self.pan_dir / f"PAN_{tile}.tif", f"SpaceNet tile {tile}: PAN image")
        ms, ms_profile = read_with_profile(self.ms_path(tile), f"SpaceNet tile {tile}: MS image")
        if pan.shape[0] != 1 or ms.shape[0] != self.ms_bands:
            raise BenchmarkDataError(
                f"SpaceNet tile {tile}: expected 1 PAN band and {self.ms_bands} MS bands (as the first tile), "
                f"got {pan.shape[0]} and {ms.shape[0]}"
            )
        pan = pan.astype(np.float32) / self.scale
        ms = ms.astype(np.float32) / self.scale
        if self.protocol == "full":
            return {"pan": torch.from_numpy(pan), "ms": torch.from_numpy(ms), "id": tile, **georeference(ms_profile)}

        ratio = self._ratio(tile, pan_profile, ms_profile)
        h, w = (ms.shape[1] // ratio) * ratio, (ms.shape[2] // ratio) * ratio
        if h == 0 or w == 0:
            raise BenchmarkDataError(f"SpaceNet tile {tile}: MS {ms.shape[1:]} px is smaller than the ratio {ratio}")
        target = ms[:, :h, :w]
        return {
            "pan": torch.from_numpy(self._pan_on_ms_grid(tile, pan, pan_profile, ms_profile, (h, w))),
            "ms": torch.from_numpy(block_average(target, ratio)),
            "target": torch.from_numpy(np.ascontiguousarray(target)),
            "id": tile,
            **georeference({**ms_profile, "height": h, "width": w}),
        }

    @staticmethod
    def _pan_on_ms_grid(
        tile: str, pan: np.ndarray, pan_profile: dict, ms_profile: dict, shape: tuple[int, int]
    ) -> np.ndarray:
        """Average the PAN onto the (cropped) MS grid; the PAN must cover it and both must be georeferenced."""
        if pan_profile["crs"] is None or ms_profile["crs"] is None:
            raise BenchmarkDataError(f"SpaceNet tile {tile}: PAN or MS has no CRS, cannot put the PAN on the MS grid")
        pan_t, ms_t = pan_profile["transform"], ms_profile["transform"]
        pan_box = (pan_t.c, pan_t.f + pan_t.e * pan.shape[1], pan_t.c + pan_t.a * pan.shape[2], pan_t.f)
        ms_box = (ms_t.c, ms_t.f + ms_t.e * shape[0], ms_t.c + ms_t.a * shape[1], ms_t.f)
        slack = abs(pan_t.a) / 2
        covered = (
            pan_box[0] <= ms_box[0] + slack
            and pan_box[1] <= ms_box[1] + slack
            and pan_box[2] >= ms_box[2] - slack
            and pan_box[3] >= ms_box[3] - slack
        )
        if pan_profile["crs"] == ms_profile["crs"] and not covered:
            raise BenchmarkDataError(
                f"SpaceNet tile {tile}: PAN extent {pan_box} does not cover the MS extent {ms_box} (left, bottom, "
                "right, top)"
            )
        pan_low = np.zeros((1, *shape), dtype=np.float32)
        reproject(
            source=pan,
            destination=pan_low,
            src_transform=pan_t,
            src_crs=pan_profile["crs"],
            dst_transform=ms_t,
            dst_crs=ms_profile["crs"],
            resampling=Resampling.average,
        )
        return pan_low
