"""ISPRS Vaihingen 2D semantic labelling: IRRG true orthophoto + DSM -> six land-cover classes.

Publisher's layout (ISPRS WG II/4 benchmark, https://www.isprs.org/education/benchmarks/UrbanSemLab/
2d-sem-label-vaihingen.aspx; data of the German Society for Photogrammetry, Remote Sensing and
Geoinformation (DGPF), available on request from ISPRS), 33 tiles at 9 cm, each about 2000 x 2500 px::

    ROOT/
      top/top_mosaic_09cm_area<N>.tif                       IRRG (near-infrared, red, green), 3 bands uint8
      dsm/dsm_09cm_matching_area<N>.tif                     surface heights in metres, float32, same pixels
      gts_for_participants/top_mosaic_09cm_area<N>.tif      colour-coded labels, 3 bands uint8
      gts_eroded_for_participants/top_mosaic_09cm_area<N>_noBoundary.tif   labels with boundaries eroded
                                                            (black = not scored), used with eroded=True

Label colours (the benchmark's legend): impervious surfaces (255,255,255), building (0,0,255), low
vegetation (0,255,255), tree (0,255,0), car (255,255,0), clutter/background (255,0,0). The released
"COMPLETE" ground-truth archives hold all 33 tiles under the same names; unpack them into the folders
above (or pass `labels_dir`).

Splits: "test" is the benchmark's 17 test tiles; the 16 tiles labelled for participants are split into
"train" (12) and "val" (4: areas 5, 15, 21, 30), the hold-out used by Audebert et al. 2018
("Beyond RGB: Very high resolution urban remote sensing with multimodal deep networks", ISPRS JPRS).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from rasterio.windows import Window

from msgfm.datasets.benchmarks._common import (
    BenchmarkDataError,
    BenchmarkDataset,
    Sample,
    Transform,
    open_profile,
    read_raster_window,
)

CLASSES: tuple[str, ...] = ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")
"""Class names in index order."""

COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)
"""The RGB colour of each class in the ground-truth images, in index order."""

IGNORE_INDEX = 255
"""Mask value of the eroded boundaries (black in the eroded ground truth), not scored."""

TEST_AREAS: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
VAL_AREAS: tuple[int, ...] = (5, 15, 21, 30)
TRAIN_AREAS: tuple[int, ...] = (1, 3, 7, 11, 13, 17, 23, 26, 28, 32, 34, 37)
AREAS: dict[str, tuple[int, ...]] = {
    "train": TRAIN_AREAS,
    "val": VAL_AREAS,
    "test": TEST_AREAS,
    "all": tuple(sorted(TRAIN_AREAS + VAL_AREAS + TEST_AREAS)),
}

_CODES = np.array([(r << 16) | (g << 8) | b for r, g, b in COLOURS], dtype=np.int64)


def colours_to_mask(gt: np.ndarray, where: str, eroded: bool = False, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(3, H, W) uint8 label colours -> (H, W) int64 class indices; an unknown colour is a clear error.

    With `eroded`, black (0, 0, 0) marks unscored boundaries and becomes IGNORE_INDEX. `offset` (row, col)
    of the window in its tile makes the error give tile coordinates.
    """
    if gt.ndim != 3 or gt.shape[0] != 3:
        raise BenchmarkDataError(f"{where}: expected a 3-band colour label image, got shape {gt.shape}")
    codes = (gt[0].astype(np.int64) << 16) | (gt[1].astype(np.int64) << 8) | gt[2].astype(np.int64)
    table = np.append(_CODES, 0) if eroded else _CODES
    values = np.append(np.arange(len(COLOURS)), IGNORE_INDEX) if eroded else np.arange(len(COLOURS))
    order = np.argsort(table)
    pos = np.clip(np.searchsorted(table[order], codes), 0, len(table) - 1)
    valid = table[order][pos] == codes
    if not valid.all():
        rows, cols = np.nonzero(~valid)
        colour = tuple(int(c) for c in gt[:, rows[0], cols[0]])
        raise BenchmarkDataError(
            f"{where}: {rows.size} pixel(s) with a colour that is no class, first {colour} at row "
            f"{rows[0] + offset[0]}, col {cols[0] + offset[1]}; valid colours: "
            + ", ".join(f"{name} {c}" for name, c in zip(CLASSES, COLOURS, strict=True))
        )
    return values[order][pos].astype(np.int64)


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Offsets of sliding windows of `size` with `stride` covering 0..length; the last is flush with the edge."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


class Vaihingen(BenchmarkDataset):
    """Vaihingen tiles -> {"rgb": (3,s,s) IRRG DN, "dsm": (1,s,s) metres, "mask": (s,s) int64 classes}.

    `crop_size=None` returns whole tiles. With a crop size, `mode="sliding"` enumerates windows with
    `stride` (default: the crop size) over every tile, flush with the far edges, and `mode="random"` draws
    `crops_per_tile` windows per tile at random offsets from torch's RNG (seeded per DataLoader worker).
    """

    name = "vaihingen"
    task = "segmentation"
    inputs: ClassVar[dict[str, str | None]] = {"rgb": "rgb", "dsm": "dsm"}
    target_key = "mask"
    class_names: ClassVar[tuple[str, ...]] = CLASSES
    splits = tuple(AREAS)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        crop_size: int | None = 256,
        mode: str = "sliding",
        stride: int | None = None,
        crops_per_tile: int = 8,
        areas: tuple[int, ...] | list[int] | None = None,
        eroded: bool = False,
        labels_dir: str | None = None,
        transforms: Transform | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if mode not in ("sliding", "random"):
            raise BenchmarkDataError(f"vaihingen: mode must be 'sliding' or 'random', got {mode!r}")
        if crop_size is not None and crop_size < 1 or stride is not None and stride < 1 or crops_per_tile < 1:
            raise BenchmarkDataError("vaihingen: crop_size, stride and crops_per_tile must be positive")
        self.crop_size, self.mode, self.crops_per_tile, self.eroded = crop_size, mode, crops_per_tile, eroded
        self.stride = stride or crop_size
        self.labels_dir = self.root / (
            labels_dir or ("gts_eroded_for_participants" if eroded else "gts_for_participants")
        )
        self.areas = tuple(areas) if areas is not None else AREAS[split]
        self.band_names = {"rgb": ("NIR", "R", "G"), "dsm": ("height",)}
        self.tile_shapes: dict[int, tuple[int, int]] = {}
        for area in self.areas:
            shapes = {}
            for layer, path in self.paths(area).items():
                profile = open_profile(path, f"Vaihingen area {area}: {layer}")
                shapes[layer] = (profile["height"], profile["width"])
                expected_bands = 1 if layer == "dsm" else 3
                if profile["count"] != expected_bands:
                    raise BenchmarkDataError(
                        f"Vaihingen area {area}: {layer} has {profile['count']} bands, "
                        f"expected {expected_bands} ({path})"
                    )
            if len(set(shapes.values())) != 1:
                raise BenchmarkDataError(f"Vaihingen area {area}: tile sizes differ between layers: {shapes}")
            shape = shapes["top"]
            if crop_size is not None and min(shape) < crop_size:
                raise BenchmarkDataError(
                    f"Vaihingen area {area}: tile {shape} px is smaller than crop_size {crop_size}"
                )
            self.tile_shapes[area] = shape
        self.windows: list[tuple[int, int, int]] = []  # (area, row, col); row/col -1 = random, whole tile if no crop
        for area, (h, w) in self.tile_shapes.items():
            if crop_size is None:
                self.windows.append((area, 0, 0))
            elif mode == "random":
                self.windows += [(area, -1, -1)] * crops_per_tile
            else:
                self.windows += [
                    (area, r, c)
                    for r in window_starts(h, crop_size, self.stride)
                    for c in window_starts(w, crop_size, self.stride)
                ]

    def paths(self, area: int) -> dict[str, Path]:
        """The three files of a tile, by layer ("top", "dsm", "gt")."""
        gt_name = f"top_mosaic_09cm_area{area}_noBoundary.tif" if self.eroded else f"top_mosaic_09cm_area{area}.tif"
        return {
            "top": self.root / "top" / f"top_mosaic_09cm_area{area}.tif",
            "dsm": self.root / "dsm" / f"dsm_09cm_matching_area{area}.tif",
            "gt": self.labels_dir / gt_name,
        }

    def __len__(self) -> int:
        return len(self.windows)

    def window_of(self, index: int) -> tuple[int, Window]:
        """The area and pixel window of sample `index` (a random window is drawn anew on each call)."""
        area, row, col = self.windows[index]
        h, w = self.tile_shapes[area]
        if self.crop_size is None:
            return area, Window(0, 0, w, h)
        if row < 0:
            row = int(torch.randint(0, h - self.crop_size + 1, ()).item())
            col = int(torch.randint(0, w - self.crop_size + 1, ()).item())
        return area, Window(col, row, self.crop_size, self.crop_size)

    def load(self, index: int) -> Sample:
        """Read one window of a tile's three layers and turn the label colours into class indices."""
        area, window = self.window_of(index)
        paths = self.paths(area)
        top = read_raster_window(paths["top"], f"Vaihingen area {area}: top", window=window)
        dsm = read_raster_window(paths["dsm"], f"Vaihingen area {area}: dsm", window=window)
        gt = read_raster_window(paths["gt"], f"Vaihingen area {area}: gt", window=window)
        mask = colours_to_mask(
            gt, f"Vaihingen area {area}: labels {paths['gt']}", self.eroded, (window.row_off, window.col_off)
        )
        return {
            "rgb": torch.from_numpy(top.astype(np.float32)),
            "dsm": torch.from_numpy(dsm.astype(np.float32)),
            "mask": torch.from_numpy(mask),
        }
