"""SEN12MS-CR: Sentinel-1 + cloudy Sentinel-2 -> cloud-free Sentinel-2 (cloud removal).

Publisher's layout (Ebel et al. 2021, "Multisensor Data Fusion for Cloud Removal in Global and
All-Season Sentinel-2 Imagery", IEEE TGRS; https://patricktum.github.io/cloud_removal/sen12mscr/,
mediaTUM https://mediatum.ub.tum.de/1554803, licence CC-BY-4.0), one folder per season and modality::

    ROOT/
      ROIs1158_spring_s1/s1_<scene>/ROIs1158_spring_s1_<scene>_p<patch>.tif                2 bands VV, VH (dB)
      ROIs1158_spring_s2/s2_<scene>/ROIs1158_spring_s2_<scene>_p<patch>.tif                13 bands L1C, cloud-free
      ROIs1158_spring_s2_cloudy/s2_cloudy_<scene>/ROIs1158_spring_s2_cloudy_<scene>_p<patch>.tif   13 bands, cloudy
      ROIs1868_summer_*, ROIs1970_fall_*, ROIs2017_winter_*                                 likewise

Patches are 256 x 256 px at 10 m; S2 is L1C top-of-atmosphere reflectance x 10000 (uint16, all 13 bands
including B10), S1 backscatter in dB (float32). The triplet of a patch shares its grid.

Splits: the validation and test scenes of the authors' reference loader (Ebel et al. 2022,
SEN12MS-CR-TS repository, `SEN12MSCR` class), listed below; every other scene is training.

Reflectance scaling: samples are returned in the sensor registry's units (x 10000) so the model can use
`msgfm.sensors` statistics. Metrics follow the SEN12MS-CR papers: clip S2 to [0, 10000] and divide by
10000, giving reflectance in 0..1 (`to_reflectance`, or `reflectance=True` to get samples already scaled).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from affine import Affine

from msgfm.datasets.benchmarks._common import (
    BenchmarkDataError,
    BenchmarkDataset,
    Sample,
    Transform,
    georeference,
    read_with_profile,
)
from msgfm.sensors import SENTINEL1, SENTINEL2

log = logging.getLogger(__name__)

SEASONS: tuple[str, ...] = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
"""The four seasonal ROI sets of SEN12MS(-CR)."""

VAL_SCENES: dict[str, tuple[int, ...]] = {
    "ROIs1158_spring": (17,),
    "ROIs1868_summer": (17, 19, 80, 127),
    "ROIs1970_fall": (65,),
    "ROIs2017_winter": (22, 84, 107, 130),
}
"""Validation scenes (season -> scene numbers) of the authors' reference loader."""

TEST_SCENES: dict[str, tuple[int, ...]] = {
    "ROIs1158_spring": (31, 44, 106, 123, 140),
    "ROIs1868_summer": (73, 119),
    "ROIs1970_fall": (139,),
    "ROIs2017_winter": (63, 108),
}
"""Test scenes (season -> scene numbers) of the authors' reference loader."""

REFLECTANCE_SCALE = 10000.0
"""S2 digital numbers per unit reflectance; metrics use clip(x, 0, 10000) / 10000."""

_PATCH = re.compile(r"^(?P<season>ROIs\d{4}_[a-z]+)_s1_(?P<scene>\d+)_p(?P<patch>\d+)\.tif$")


def to_reflectance(s2: torch.Tensor) -> torch.Tensor:
    """S2 digital numbers (x 10000) -> reflectance in 0..1, the SEN12MS-CR metric convention."""
    return s2.clamp(0.0, REFLECTANCE_SCALE) / REFLECTANCE_SCALE


def _describe(transform: Affine, shape: tuple[int, ...]) -> str:
    """A one-line description of a raster grid for error messages."""
    return f"origin {transform.c:.2f}, {transform.f:.2f}; {transform.a:g} m; {shape[0]} x {shape[1]} px"


def split_of(season: str, scene: int) -> str:
    """The official split ("train", "val" or "test") of a season's scene."""
    if scene in TEST_SCENES.get(season, ()):
        return "test"
    if scene in VAL_SCENES.get(season, ()):
        return "val"
    return "train"


class SEN12MSCR(BenchmarkDataset):
    """SEN12MS-CR triplets -> {"s1": (2,256,256) dB, "s2_cloudy": (13,256,256), "s2": (13,256,256) target}, with
    the patch id (`id`) and the triplet's georeference (`crs`, `bounds`).

    `on_incomplete="error"` (default) makes a patch whose S2 or cloudy-S2 file is absent a clear error;
    "skip" leaves such patches out (as the authors' loader does) and logs how many were dropped.
    """

    name = "sen12ms_cr"
    task = "cloud_removal"
    inputs: ClassVar[dict[str, str | None]] = {"s1": "s1", "s2_cloudy": "s2"}
    target_key = "s2"
    splits = ("train", "val", "test", "all")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        reflectance: bool = False,
        on_incomplete: str = "error",
        transforms: Transform | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if on_incomplete not in ("error", "skip"):
            raise BenchmarkDataError(f"sen12ms_cr: on_incomplete must be 'error' or 'skip', got {on_incomplete!r}")
        self.reflectance = reflectance
        self.band_names = {"s1": SENTINEL1.band_names, "s2_cloudy": SENTINEL2.band_names, "s2": SENTINEL2.band_names}
        self.triplets: list[tuple[str, Path, Path, Path]] = []
        dropped = 0
        for season in SEASONS:
            for s1_path in sorted((self.root / f"{season}_s1").glob("s1_*/*.tif")):
                match = _PATCH.match(s1_path.name)
                if match is None or match["season"] != season:
                    continue
                scene, patch = int(match["scene"]), match["patch"]
                if split != "all" and split_of(season, scene) != split:
                    continue
                s2 = self.root / f"{season}_s2" / f"s2_{scene}" / f"{season}_s2_{scene}_p{patch}.tif"
                cloudy = (
                    self.root
                    / f"{season}_s2_cloudy"
                    / f"s2_cloudy_{scene}"
                    / f"{season}_s2_cloudy_{scene}_p{patch}.tif"
                )
                patch_id = f"{season}_{scene}_p{patch}"
                absent = [p for p in (s2, cloudy) if not p.is_file()]
                if absent and on_incomplete == "error":
                    raise BenchmarkDataError(f"SEN12MS-CR patch {patch_id}: triplet incomplete, missing {absent[0]}")
                if absent:
                    dropped += 1
                    continue
                self.triplets.append((patch_id, s1_path, s2, cloudy))
        if dropped:
            log.warning("SEN12MS-CR %s: left out %d patches without all three files", split, dropped)
        if not self.triplets:
            raise BenchmarkDataError(
                f"sen12ms_cr: no {split} patches under {self.root}; expected "
                "ROIs<season>_s1/s1_<scene>/ROIs<season>_s1_<scene>_p<patch>.tif with matching _s2 and _s2_cloudy"
            )

    def __len__(self) -> int:
        return len(self.triplets)

    def patch_id(self, index: int) -> str:
        """`<season>_<scene>_p<patch>` of sample `index`."""
        return self.triplets[index][0]

    def load(self, index: int) -> Sample:
        """Read one triplet, checking band counts and that the three rasters share one grid."""
        patch_id, *paths = self.triplets[index]
        arrays, grids, profiles = {}, {}, {}
        for key, path, count in zip(("s1", "s2", "s2_cloudy"), paths, (2, 13, 13), strict=True):
            what = f"SEN12MS-CR patch {patch_id}: {key}"
            data, profile = read_with_profile(path, what)
            if data.shape[0] != count:
                raise BenchmarkDataError(f"{what} has {data.shape[0]} bands, expected {count} ({path})")
            arrays[key] = data.astype(np.float32)
            grids[key], profiles[key] = (profile["transform"], data.shape[1:]), profile
        for key in ("s2", "s2_cloudy"):
            if grids[key] != grids["s1"]:
                raise BenchmarkDataError(
                    f"SEN12MS-CR patch {patch_id}: {key} grid ({_describe(*grids[key])}) differs from "
                    f"s1 grid ({_describe(*grids['s1'])})"
                )
        sample = {key: torch.from_numpy(a) for key, a in arrays.items()}
        sample.update(id=patch_id, **georeference(profiles["s1"]))
        if self.reflectance:
            sample["s2"] = to_reflectance(sample["s2"])
            sample["s2_cloudy"] = to_reflectance(sample["s2_cloudy"])
        return sample
