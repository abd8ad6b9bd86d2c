"""BigEarthNet v1.0 (Sentinel-2 L2A) with BigEarthNet-S1 v1.0, multi-label scene classification.

Publisher's layout (https://bigearth.net, v1.0 archives `BigEarthNet-S2-v1.0.tar.gz` and
`BigEarthNet-S1-v1.0.tar.gz`, licence CDLA-Permissive-1.0), under one root::

    ROOT/
      BigEarthNet-v1.0/                       (the S2 archive's folder)
        S2A_MSIL2A_20170613T101031_87_48/
          S2A_MSIL2A_20170613T101031_87_48_B01.tif ... _B12.tif   12 bands, one GeoTIFF each, uint16
          S2A_MSIL2A_20170613T101031_87_48_labels_metadata.json    {"labels": [CORINE 43-class names], ...}
      BigEarthNet-S1-v1.0/
        S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48/
          ..._VV.tif, ..._VH.tif                                    backscatter in dB, float32, 120 x 120
          ..._labels_metadata.json                                  {"corresponding_s2_patch": "S2A_...", ...}
      train.csv, val.csv, test.csv                                  official splits, one S2 patch name a line

A patch covers 1.2 x 1.2 km: 10 m bands (B02-B04, B08) are 120 x 120 px, 20 m bands (B05-B07, B8A, B11,
B12) 60 x 60 and 60 m bands (B01, B09) 20 x 20; all are resampled to the 10 m grid (120 x 120) on read.
The split CSVs are the official ones of Sumbul et al. (they leave out the patches covered by seasonal
snow, clouds and cloud shadows); the BigEarthNet-MM variant with a second column naming the S1 patch
is accepted too, and then no S1 metadata has to be scanned to join the sensors.

The 19-class nomenclature (Sumbul et al. 2021, "BigEarthNet-MM: A Large-Scale, Multimodal, Multilabel
Benchmark Archive for Remote Sensing Image Classification and Retrieval", IEEE GRSM, table of the
CORINE Land Cover level-3 -> 19-class mapping; the same table as `bigearthnet-common`'s
`OLD2NEW_LABELS_DICT`) drops 11 of the 43 labels that cannot be told apart at Sentinel-2 resolution.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from msgfm.datasets.benchmarks._common import (
    BenchmarkDataError,
    BenchmarkDataset,
    Sample,
    Transform,
    georeference,
    open_profile,
    read_raster_window,
    require_dir,
    resampling_method,
)
from msgfm.sensors import S2_L2A_BANDS, SENTINEL1

log = logging.getLogger(__name__)

S2_FOLDER = "BigEarthNet-v1.0"
S1_FOLDER = "BigEarthNet-S1-v1.0"
PATCH_PX = 120
"""Side of a patch on the 10 m grid."""

CORINE_LABELS_43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)
"""The 43 CORINE Land Cover level-3 names used in BigEarthNet v1.0 metadata, in the archive's index order."""

BIGEARTHNET_19_CLASSES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
"""The BigEarthNet-19 nomenclature (Sumbul et al. 2021), in its official index order."""

CORINE_TO_19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}
"""CORINE 43-class name -> BigEarthNet-19 class name; None for the 11 labels the 19-class nomenclature drops."""

S1_BANDS: tuple[str, ...] = SENTINEL1.band_names
"""("VV", "VH"), as in the sensor registry and the BigEarthNet-S1 file suffixes."""


def labels_to_indices(labels: list[str], num_classes: int, patch: str) -> list[int]:
    """Indices of a patch's CORINE label names in the 19- or 43-class nomenclature (dropped labels omitted)."""
    unknown = [name for name in labels if name not in CORINE_TO_19]
    if unknown:
        raise BenchmarkDataError(f"BigEarthNet patch {patch}: unknown CORINE label(s) {unknown}")
    if num_classes == 43:
        return sorted({CORINE_LABELS_43.index(name) for name in labels})
    mapped = {CORINE_TO_19[name] for name in labels} - {None}
    return sorted(BIGEARTHNET_19_CLASSES.index(name) for name in mapped)


def read_split_csv(path: Path) -> list[tuple[str, str | None]]:
    """Rows (S2 patch, S1 patch or None) of an official split CSV; a missing file is a clear error."""
    if not path.is_file():
        raise BenchmarkDataError(
            f"BigEarthNet split file {path.name} missing (expected {path}); put the official "
            "train.csv / val.csv / test.csv (one S2 patch name a line) in the root"
        )
    rows: list[tuple[str, str | None]] = []
    with open(path, newline="") as f:
        for line_no, cells in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in cells if c.strip()]
            if not cells:
                continue
            if not cells[0].startswith("S2"):
                raise BenchmarkDataError(f"{path}:{line_no}: expected an S2 patch name, got {cells[0]!r}")
            rows.append((cells[0], cells[1] if len(cells) > 1 else None))
    if not rows:
        raise BenchmarkDataError(f"BigEarthNet split file {path} lists no patches")
    return rows


def _row_col(patch: str) -> str:
    """The trailing `<row>_<col>` of a patch name; S2 and S1 names of one patch share it."""
    return "_".join(patch.rsplit("_", 2)[-2:])


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BenchmarkDataError(f"{what} missing (expected {path})")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchmarkDataError(f"{what} unreadable ({path}): {e}") from None


class BigEarthNet(BenchmarkDataset):
    """BigEarthNet v1.0 S2 (+S1) patches -> {"s2": (12,120,120), "s1": (2,120,120), "label": (19,) multi-hot}, with
    the patch name (`id`) and its georeference (`crs`, `bounds` of the 10 m grid).

    `s2` is L2A reflectance x 10000 and `s1` backscatter in dB, both float32 in the sensor registry's
    units (normalise with `msgfm.sensors.get_sensor(...).normalise`). 20 m and 60 m bands are resampled
    to 10 m with `resampling` (bilinear by default, as in the BigEarthNet reference code). The split's
    patches come from `ROOT/<split>.csv` unless `split_file` names another CSV (e.g. TorchGeo's
    two-column `bigearthnet-<split>.csv`).
    """

    name = "bigearthnet"
    task = "classification"
    inputs: ClassVar[dict[str, str | None]] = {"s2": "s2", "s1": "s1"}
    target_key = "label"
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        sensors: tuple[str, ...] = ("s2", "s1"),
        num_classes: int = 19,
        resampling: str = "bilinear",
        split_file: str | Path | None = None,
        transforms: Transform | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if not sensors or set(sensors) - {"s1", "s2"}:
            raise BenchmarkDataError(f"bigearthnet: sensors must be a non-empty subset of ('s2', 's1'), got {sensors}")
        if num_classes not in (19, 43):
            raise BenchmarkDataError(f"bigearthnet: num_classes must be 19 or 43, got {num_classes}")
        self.sensors = tuple(sensors)
        self.num_classes = num_classes
        self.resampling = resampling_method(resampling)
        self.class_names = BIGEARTHNET_19_CLASSES if num_classes == 19 else CORINE_LABELS_43
        self.band_names = {k: v for k, v in (("s2", S2_L2A_BANDS), ("s1", S1_BANDS)) if k in self.sensors}

        hint = f"expected the BigEarthNet v1.0 layout ({S2_FOLDER}/ and {S1_FOLDER}/ under the root)"
        self.s2_dir = require_dir(self.root / S2_FOLDER, "bigearthnet", hint)
        rows = read_split_csv(Path(split_file) if split_file is not None else self.root / f"{split}.csv")
        self.s2_patches = [s2 for s2, _ in rows]
        self.s1_patches: list[str] | None = None
        if "s1" in self.sensors:
            self.s1_dir = require_dir(self.root / S1_FOLDER, "bigearthnet", hint)
            named = {s2: s1 for s2, s1 in rows if s1 is not None}
            if len(named) < len(rows):
                named.update(self._join_s1([s2 for s2, s1 in rows if s1 is None]))
            self.s1_patches = [named[s2] for s2 in self.s2_patches]

    def _join_s1(self, s2_patches: list[str]) -> dict[str, str]:
        """Map S2 patch names to S1 patch names through each S1 patch's `corresponding_s2_patch`.

        Only the S1 folders sharing an S2 patch's `<row>_<col>` suffix are opened, so the scan reads a
        small part of the S1 metadata; the two-column BigEarthNet-MM CSVs skip it entirely.
        """
        wanted = set(s2_patches)
        candidates: dict[str, list[Path]] = defaultdict(list)
        with os.scandir(self.s1_dir) as entries:
            for entry in entries:
                if entry.is_dir():
                    candidates[_row_col(entry.name)].append(Path(entry.path))
        to_open = [folder for key in {_row_col(p) for p in wanted} for folder in candidates.get(key, [])]
        joined: dict[str, str] = {}
        for folder in tqdm(to_open, desc="BigEarthNet: joining S1 to S2", disable=len(to_open) < 1000):
            meta = _read_json(
                folder / f"{folder.name}_labels_metadata.json", f"BigEarthNet S1 patch {folder.name}: metadata"
            )
            s2 = meta.get("corresponding_s2_patch")
            if s2 in wanted:
                joined[s2] = folder.name
        missing = sorted(wanted - joined.keys())
        if missing:
            raise BenchmarkDataError(
                f"BigEarthNet: no S1 patch in {self.s1_dir} names {len(missing)} S2 patch(es) of the {self.split} "
                f"split as its corresponding_s2_patch, e.g. {missing[0]}; pass sensors=('s2',) to use S2 only"
            )
        log.info("BigEarthNet %s: joined %d S1 patches to S2", self.split, len(joined))
        return joined

    def __len__(self) -> int:
        return len(self.s2_patches)

    def _read_bands(self, folder: Path, patch: str, bands: tuple[str, ...], what: str) -> torch.Tensor:
        """One patch folder's single-band GeoTIFFs `<patch>_<band>.tif`, stacked on the 120 px grid."""
        planes = [
            read_raster_window(
                folder / f"{patch}_{band}.tif",
                f"{what}: band {band}",
                indexes=1,
                out_shape=(PATCH_PX, PATCH_PX),
                resampling=self.resampling,
            )
            for band in bands
        ]
        return torch.from_numpy(np.stack(planes).astype(np.float32))

    def load(self, index: int) -> Sample:
        """Read one patch: S2 bands on the 10 m grid, S1 VV/VH, and the multi-hot target."""
        patch = self.s2_patches[index]
        folder = self.s2_dir / patch
        sample: Sample = {}
        if "s2" in self.sensors:
            sample["s2"] = self._read_bands(folder, patch, S2_L2A_BANDS, f"BigEarthNet patch {patch}")
        if self.s1_patches is not None:
            s1 = self.s1_patches[index]
            sample["s1"] = self._read_bands(self.s1_dir / s1, s1, S1_BANDS, f"BigEarthNet S1 patch {s1} (of {patch})")
        meta = _read_json(folder / f"{patch}_labels_metadata.json", f"BigEarthNet patch {patch}: labels metadata")
        if not isinstance(meta.get("labels"), list):
            raise BenchmarkDataError(f"BigEarthNet patch {patch}: labels metadata has no 'labels' list")
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[labels_to_indices(meta["labels"], self.num_classes, patch)] = 1.0
        sample["label"] = target
        profile = open_profile(folder / f"{patch}_B02.tif", f"BigEarthNet patch {patch}: band B02")
        return {**sample, "id": patch, **georeference(profile)}

    def s1_patch_of(self, index: int) -> str | None:
        """Name of the S1 patch joined to sample `index` (None when S1 is not loaded)."""
        return None if self.s1_patches is None else self.s1_patches[index]
