"""Write the small synthetic benchmark fixtures in the publishers' exact layouts (committed; rerun to rebuild).

- tests/data/spacenet/: 18 SpaceNet-style tiles (SPACENET_TILES), PAN/PAN_<AOI>_img<N>.tif (1 band, 0.3 m, 66 x 66 px) and
  MS/MS_<AOI>_img<N>.tif (8 bands, 1.2 m, 17 x 17 px, so Wald's protocol has to crop to 16 x 16), uint16
  11-bit values, EPSG:32611. PAN and MS are both made from one 0.3 m 8-band scene, so they are consistent.
- tests/data/vaihingen/: the four validation tiles (areas 5, 15, 21, 30) of ISPRS Vaihingen, top/ (IRRG
  uint8), dsm/ (float32 m), gts_for_participants/ and gts_eroded_for_participants/ (colour-coded labels),
  a few dozen px a side, with every class present.
- tests/data/bigearthnet-v1/{train,val,test}.csv: split files for the four real BigEarthNet sample patches.

Usage: .venv/bin/python tests/data/make_benchmark_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine

from msgfm.geo.io import atomic_write_text, write_cog

HERE = Path(__file__).resolve().parent
AOI = "AOI_9_Synthetic"
SPACENET_TILES = (*range(1, 13), 13, 18, 20, 33, 45, 46)
"""Tile numbers whose ids hash (msgfm.datasets.benchmarks.spacenet.hash_fraction) to train (1-12), val (13, 20,
33) and test (18, 45, 46): every split of SpaceNet fine-tuning has tiles, the test split at least two units."""
VAIHINGEN_TILES = {5: (40, 48), 15: (48, 40), 21: (44, 44), 30: (40, 40)}
VAIHINGEN_COLOURS = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
BIGEARTHNET_SPLITS = {
    "train": ["S2A_MSIL2A_20170613T101031_87_48", "S2A_MSIL2A_20170617T113321_36_85"],
    "val": ["S2A_MSIL2A_20170617T113321_4_55"],
    "test": ["S2B_MSIL2A_20170924T93020_69_24"],
}


def _smooth(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """A smooth random field in 0..1: coarse noise upsampled by repetition and box-blurred."""
    coarse = rng.random((shape[0] // scale + 2, shape[1] // scale + 2))
    field = np.kron(coarse, np.ones((scale, scale)))[: shape[0] + scale, : shape[1] + scale]
    kernel = np.ones(scale) / scale
    field = np.apply_along_axis(np.convolve, 0, field, kernel, mode="valid")
    field = np.apply_along_axis(np.convolve, 1, field, kernel, mode="valid")
    return field[: shape[0], : shape[1]]


def make_spacenet(root: Path, tiles: tuple[int, ...] = SPACENET_TILES) -> None:
    """PAN/MS tile pairs built from one 0.3 m 8-band scene each (MS = 4 x 4 block means)."""
    rng = np.random.default_rng(20240601)
    pan_px, ms_px, ratio = 66, 17, 4
    for n in tiles:
        fine = np.stack([_smooth(rng, (ms_px * ratio, ms_px * ratio), 6) for _ in range(8)])
        fine = 150.0 + 1700.0 * (0.6 * fine + 0.4 * fine.mean(axis=0, keepdims=True))
        pan = fine[1:6].mean(axis=0)[:pan_px, :pan_px]
        ms = fine.reshape(8, ms_px, ratio, ms_px, ratio).mean(axis=(2, 4))
        origin = (500000.0 + 100.0 * n, 4000000.0)
        write_cog(
            root / "PAN" / f"PAN_{AOI}_img{n}.tif",
            np.round(pan).astype(np.uint16),
            crs="EPSG:32611",
            transform=Affine(0.3, 0, origin[0], 0, -0.3, origin[1]),
        )
        write_cog(
            root / "MS" / f"MS_{AOI}_img{n}.tif",
            np.round(ms).astype(np.uint16),
            crs="EPSG:32611",
            transform=Affine(1.2, 0, origin[0], 0, -1.2, origin[1]),
        )
    atomic_write_text(
        root / "README.md",
        "# SpaceNet-style PAN/MS fixture (synthetic)\n\n"
        "Synthetic, not SpaceNet data: written by `tests/data/make_benchmark_fixtures.py` in the SpaceNet 2-5\n"
        "layout (https://spacenet.ai/datasets/), `PAN/PAN_<AOI>_img<N>.tif` and `MS/MS_<AOI>_img<N>.tif`\n"
        f"(AOI `{AOI}`, tiles {', '.join(map(str, tiles))}).\n"
        "By the loader's tile-id hash, tiles 1-12 are train, 13, 20 and 33 val, 18, 45 and 46 test.\n\n"
        "- PAN: 1 band, 66 x 66 px at 0.3 m, uint16 (11-bit values), EPSG:32611.\n"
        "- MS: 8 bands (WorldView order), 17 x 17 px at 1.2 m (ratio 4; 17 is not a multiple of 4, so\n"
        "  Wald's protocol must crop to 16 x 16), the 4 x 4 block means of the same 0.3 m scene as the PAN.\n\n"
        "The PAN is the mean of the Blue..Red bands of the 0.3 m scene, so the PAN's detail is the MS's in those\n"
        "bands and only partly (the scene's shared component) in Coastal, RedEdge, NIR1 and NIR2.\n\n"
        "Used by tests/test_benchmarks.py (SpaceNetPansharpen, Wald's protocol) and tests/test_finetune.py\n"
        "(SpaceNet pan-sharpening fine-tuning on the WorldView sensors, against HPF and bicubic).\n",
    )


def _vaihingen_classes(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A class map with roads, buildings, trees, low vegetation, cars and clutter (indices 0..5)."""
    h, w = shape
    classes = np.full(shape, 2, dtype=np.uint8)  # low vegetation
    classes[h // 2 - 3 : h // 2 + 3, :] = 0  # a road
    classes[:, w // 3 - 2 : w // 3 + 2] = 0
    for _ in range(3):  # buildings
        r, c = rng.integers(0, h - 10), rng.integers(0, w - 10)
        classes[r : r + rng.integers(6, 10), c : c + rng.integers(6, 10)] = 1
    yy, xx = np.mgrid[:h, :w]
    for _ in range(2):  # trees
        r, c = rng.integers(4, h - 4), rng.integers(4, w - 4)
        classes[(yy - r) ** 2 + (xx - c) ** 2 <= 9] = 3
    classes[h // 2 - 1 : h // 2 + 1, 2:5] = 4  # a car on the road
    classes[h - 3 :, w - 3 :] = 5  # clutter
    return classes


def make_vaihingen(root: Path) -> None:
    """The four validation tiles: IRRG, DSM and colour-coded labels (full and eroded) from one class map."""
    rng = np.random.default_rng(20240602)
    colours = np.array(VAIHINGEN_COLOURS, dtype=np.uint8)
    irrg = np.array([[110, 120, 115], [90, 140, 130], [200, 90, 100], [180, 70, 80], [60, 60, 200], [120, 100, 90]])
    heights = np.array([0.0, 8.0, 0.2, 12.0, 1.5, 1.0])
    for area, shape in VAIHINGEN_TILES.items():
        classes = _vaihingen_classes(rng, shape)
        transform = Affine(0.09, 0, 496000.0 + 10 * area, 0, -0.09, 5420000.0)
        noise = rng.normal(0.0, 6.0, (3, *shape))
        top = np.clip(irrg[classes].transpose(2, 0, 1) + noise, 0, 255).astype(np.uint8)
        dsm = (265.0 + _smooth(rng, shape, 8) + heights[classes]).astype(np.float32)
        gt = colours[classes].transpose(2, 0, 1)
        boundary = np.zeros(shape, dtype=bool)
        boundary[:-1] |= classes[:-1] != classes[1:]
        boundary[:, :-1] |= classes[:, :-1] != classes[:, 1:]
        eroded = gt.copy()
        eroded[:, boundary] = 0
        name = f"top_mosaic_09cm_area{area}.tif"
        kw = {"crs": "EPSG:32632", "transform": transform}
        write_cog(root / "top" / name, top, **kw)
        write_cog(root / "dsm" / f"dsm_09cm_matching_area{area}.tif", dsm, **kw)
        write_cog(root / "gts_for_participants" / name, gt, **kw)
        write_cog(root / "gts_eroded_for_participants" / name.replace(".tif", "_noBoundary.tif"), eroded, **kw)
    sizes = ", ".join(f"area{a} {h} x {w} px" for a, (h, w) in VAIHINGEN_TILES.items())
    atomic_write_text(
        root / "README.md",
        "# ISPRS Vaihingen-style fixture (synthetic)\n\n"
        "Synthetic, not ISPRS data: written by `tests/data/make_benchmark_fixtures.py` in the layout of the\n"
        "ISPRS 2D semantic labelling benchmark, Vaihingen\n"
        "(https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx), for the four\n"
        f"validation areas of msgfm's split ({sizes}):\n\n"
        "- `top/top_mosaic_09cm_area<N>.tif`: IRRG, 3 bands uint8, 9 cm.\n"
        "- `dsm/dsm_09cm_matching_area<N>.tif`: heights in metres, float32, same pixels.\n"
        "- `gts_for_participants/top_mosaic_09cm_area<N>.tif`: colour-coded labels of all six classes.\n"
        "- `gts_eroded_for_participants/top_mosaic_09cm_area<N>_noBoundary.tif`: the same with class\n"
        "  boundaries set to black (not scored), as in the benchmark's eroded ground truth.\n\n"
        "Used by tests/test_benchmarks.py (Vaihingen loader: colours -> classes, crops).\n",
    )


def make_bigearthnet_splits(root: Path) -> None:
    """train/val/test CSVs (one S2 patch name a line, as the official files) for the four sample patches."""
    for split, patches in BIGEARTHNET_SPLITS.items():
        atomic_write_text(root / f"{split}.csv", "".join(f"{p}\n" for p in patches))


if __name__ == "__main__":
    make_spacenet(HERE / "spacenet")
    make_vaihingen(HERE / "vaihingen")
    make_bigearthnet_splits(HERE / "bigearthnet-v1")
    print("wrote tests/data/spacenet, tests/data/vaihingen and tests/data/bigearthnet-v1/{train,val,test}.csv")
