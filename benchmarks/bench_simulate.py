"""Speed of `msgfm simulate` on the default world (params.yaml) against raw COG writing of the same pixels.

The simulator renders every acquisition of the default world into a temporary folder; the reference then
writes, with the same msgfm.geo.io.write_cog, one random-valued COG of the same shape and dtype for every
file the simulator wrote. Both run in this process, one after the other, so machine load hits both alike;
CPU time (process_time) is printed beside wall time because the machine is shared.
Prints one JSON object; targets: default world under 60 s wall, and at most 4x the raw-write reference.

    .venv/bin/python benchmarks/bench_simulate.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from msgfm.config import load_params
from msgfm.geo.io import write_cog
from msgfm.sim.simulate import simulate_world

TARGET_SECONDS = 60.0
TARGET_RATIO = 4.0


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    with tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp:
        cfg = params.simulate.model_copy(update={"out_dir": Path(tmp) / "source", "until": None})
        w0, c0 = _clock()
        simulate_world(cfg, seed=params.seed, progress=False)
        w1, c1 = _clock()
        files = sorted((Path(tmp) / "source").rglob("*.tif"))
        shapes = []
        for f in files:
            with rasterio.open(f) as src:
                shapes.append((src.count, src.height, src.width, src.dtypes[0]))
        pixels = sum(c * h * w for c, h, w, _ in shapes)
        rng = np.random.default_rng(0)
        ref_dir = Path(tmp) / "reference"
        w2, c2 = _clock()
        for i, (c, h, w, dtype) in enumerate(shapes):
            if np.dtype(dtype).kind == "f":
                data = rng.standard_normal((c, h, w)).astype(dtype)
            else:
                data = rng.integers(0, np.iinfo(dtype).max, (c, h, w), dtype=dtype)
            write_cog(ref_dir / f"{i}.tif", data, crs="EPSG:32632", transform=Affine(10, 0, 0, 0, -10, 0))
        w3, c3 = _clock()
    sim_s, ref_s = w1 - w0, w3 - w2
    ratio = sim_s / ref_s
    print(
        json.dumps(
            {
                "benchmark": "simulate",
                "aois": len(cfg.aois),
                "files": len(files),
                "pixels": pixels,
                "seconds": round(sim_s, 2),
                "cpu_seconds": round(c1 - c0, 2),
                "pixels_per_second": round(pixels / sim_s),
                "reference_raw_write_seconds": round(ref_s, 2),
                "reference_cpu_seconds": round(c3 - c2, 2),
                "reference_pixels_per_second": round(pixels / ref_s),
                "ratio_to_reference": round(ratio, 2),
                "cpu_ratio_to_reference": round((c1 - c0) / (c3 - c2), 2),
                "target_seconds": TARGET_SECONDS,
                "target_ratio": TARGET_RATIO,
                "ok": sim_s < TARGET_SECONDS and ratio <= TARGET_RATIO,
            }
        )
    )


if __name__ == "__main__":
    main()
