"""Tiled `msgfm embed` on a generated Sentinel-2 raster: pixels/s and peak memory against a plain encoder pass.

A 13-band uint16 Sentinel-2 GeoTIFF of `--size` x `--size` pixels (smooth fields plus noise, tiled, deflate)
is written strip by strip, then embedded by `embed_geotiff` with msgfm_tiny (seeded weights: speed does
not depend on training) in a child process, which reports its wall time and peak resident memory. The
reference, measured in the same run with the same threads, is a plain forward pass of the same encoder
over the same number of windows of the same batch size, from chips already in memory: no reading,
normalising, stitching or writing. Ratio = embed pixels/s / reference pixels/s (target >= 0.8). The
child's peak RSS is printed with what it held before embedding (torch, the model, one batch) and the
difference, beside the size of the raster as float32, which a whole-raster embed would have held.

    .venv/bin/python benchmarks/bench_embed.py [--size 2048] [--stage -1] [--batch 16] [--threads 1]
    .venv/bin/python benchmarks/bench_embed.py --size 20000   # the issue's case (about 10 GB of input)

`--px` is the old name of `--size`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from msgfm.inference.tiling import axis_plan, window_count
from msgfm.models import create_model
from msgfm.models.hub import save_pretrained
from msgfm.sensors import get_sensor

TARGET_RATIO = 0.8


def write_raster(path: Path, px: int, strip: int = 512) -> None:
    """A px x px, 13-band uint16 S2-like GeoTIFF, written strip by strip (never whole in memory)."""
    bands = get_sensor("s2").band_names
    mean, std = get_sensor("s2").stats()
    profile = {
        "driver": "GTiff",
        "count": len(bands),
        "width": px,
        "height": px,
        "dtype": "uint16",
        "crs": "EPSG:32632",
        "transform": Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    rng = np.random.default_rng(0)
    cols = np.arange(px, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, px, strip):
            rows = np.arange(row0, min(row0 + strip, px), dtype=np.float32)[:, None]
            field = np.sin(rows / 97.0) * np.cos(cols[None] / 61.0)
            noise = rng.normal(0, 0.3, size=(len(bands), len(rows), px)).astype(np.float32)
            values = mean[:, None, None] + std[:, None, None] * (field[None] + noise)
            dst.write(np.clip(values, 0, 65535).astype(np.uint16), window=Window(0, row0, px, len(rows)))
        for i, name in enumerate(bands, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(sensor="s2", datetime="2024-06-01T10:30:00")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Embed in this (child) process; print wall seconds and peak RSS as JSON."""
    from msgfm.inference.embed import embed_geotiff
    from msgfm.models.hub import load_pretrained

    torch.set_num_threads(args.threads)
    reference(load_pretrained(args.model), args.batch, args.batch, args.stage, args.device)  # imports + one batch
    baseline = peak_rss_mb()
    start = time.perf_counter()
    embed_geotiff(args.src, args.model, args.out, stage=args.stage, batch_size=args.batch, device=args.device)
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak, "baseline_rss_mb": baseline}))


def reference(model, windows: int, batch: int, stage: int, device: str) -> float:
    """Seconds of a plain encoder pass over `windows` in-memory chips, `batch` at a time."""
    encoder, chip = model.encoder, model.config.chip_px
    bands = get_sensor("s2").band_names
    x = torch.randn(batch, len(bands), chip, chip, generator=torch.Generator().manual_seed(0)).to(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for done in range(0, windows, batch):
            n = min(batch, windows - done)
            encoder({"s2": x[:n]}, {"s2": bands}).features["s2"][stage].float().cpu()
    return time.perf_counter() - start


def main() -> None:
    """Write the raster, embed it in a child, time the reference, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", "--px", dest="px", type=int, default=2048, help="raster side in pixels")
    parser.add_argument("--stage", type=int, default=-1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        tmp = Path(tmp)
        src, model_dir, out = tmp / "s2.tif", tmp / "model", tmp / "emb.tif"
        t0 = time.perf_counter()
        write_raster(src, args.px)
        write_s = time.perf_counter() - t0
        torch.manual_seed(0)
        model = create_model("msgfm_tiny").eval().to(args.device)
        save_pretrained(model.cpu(), model_dir)
        model.to(args.device)
        cfg = model.config
        stage = args.stage % len(cfg.depths)
        stride = cfg.patch_px * 2**stage
        plan = axis_plan(args.px, cfg.chip_px, stride)
        windows = window_count(plan, plan)
        ref_before = reference(model, windows, args.batch, stage, args.device)
        command = [sys.executable, __file__, "--child", "--src", str(src), "--model", str(model_dir), "--out", str(out)]
        command += ["--stage", str(stage), "--batch", str(args.batch), "--threads", str(args.threads)]
        command += ["--device", args.device]
        run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        ref_after = reference(model, windows, args.batch, stage, args.device)
        ref_s = min(ref_before, ref_after)
        pixels = args.px * args.px
        ratio = (pixels / run["wall_s"]) / (pixels / ref_s)
        with rasterio.open(out) as emb:
            grid = [emb.count, emb.height, emb.width]
        result = {
            "px": args.px,
            "stage": stage,
            "stride_px": stride,
            "batch": args.batch,
            "threads": args.threads,
            "device": args.device,
            "windows": windows,
            "grid": grid,
            "write_input_s": round(write_s, 2),
            "embed_s": round(run["wall_s"], 2),
            "embed_px_per_s": round(pixels / run["wall_s"]),
            "reference_s": round(ref_s, 2),
            "reference_px_per_s": round(pixels / ref_s),
            "ratio_embed_vs_reference": round(ratio, 3),
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "rss_before_embed_mb": round(run["baseline_rss_mb"], 1),
            "rss_added_by_embed_mb": round(run["peak_rss_mb"] - run["baseline_rss_mb"], 1),
            "raster_as_float32_mb": round(pixels * 13 * 4 / 2**20, 1),
            "target_ratio": TARGET_RATIO,
            "pass": ratio >= TARGET_RATIO,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
