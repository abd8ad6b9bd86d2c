"""Random chip reads from the sharded chip store against reading the same chips from one bare memory-mapped .npy.

A store of --chips Sentinel-2 chips (12 bands, 64 px, uint16, the pair stage's layout) in --shards shards (as
pair writes one per AOI) is written with msgfm.chips.store.ChipStoreWriter into a temporary folder, and the same
chips as one (N, C, H, W) .npy beside it. Then batches of --batch random indices over the whole store (so a
batch spans shards, as a shuffled epoch does) are read, alternating between the reference (np.load(mmap_mode="r")
of the one array, fancy-indexed with the sorted indices) and ChipStore.raw (indices in the caller's order), and
ChipStore.read (normalised float32, what pretraining consumes). The best of --repeats rounds counts, so load from
other processes hits all alike. Prints one JSON object; targets: raw reads >= 0.8x the reference, normalised reads
>= 0.5x raw reads (issue 18 item 5; its own `pass_normalised_ratio`) and >= 10x the pretraining consumption
(300 samples/s for msgfm_tiny at 64 px unless --consumption says).

    .venv/bin/python benchmarks/bench_chipstore.py [--chips 2048] [--shards 8] [--batch 64] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from msgfm.chips.store import ChipStore, ChipStoreWriter, SensorArray
from msgfm.sensors import S2_L2A_BANDS

TARGET_RATIO = 0.8
TARGET_NORMALISED_RATIO = 0.5
TARGET_HEADROOM = 10.0


def build_store(root: Path, chips: int, shards: int, chip_px: int, seed: int) -> np.ndarray:
    """Write `chips` random S2 chips chip by chip into `shards` shards, as the pair stage does; return them all."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 10000, (chips, 12, chip_px, chip_px), dtype=np.uint16)
    writer = ChipStoreWriter(root, chip_px)
    mask = np.zeros((chip_px, chip_px), np.uint8)
    entries = []
    for n, rows in enumerate(np.array_split(np.arange(chips), shards)):
        shard = writer.shard(f"{n:05d}", [SensorArray("s2", len(rows), S2_L2A_BANDS, "uint16")], {"s10": 0})
        for local, i in enumerate(rows):
            shard.write("s2", local, pixels[i], mask)
        entries.append(shard.close())
    writer.commit(entries)
    return pixels


def rate(fn, batches: list[np.ndarray]) -> float:
    """Chips per second of `fn` over the batches."""
    start = time.perf_counter()
    n = 0
    for idx in batches:
        n += len(fn(idx))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--chip-px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--consumption", type=float, default=300.0, help="pretraining samples/s to compare with")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_chips_")) / "chips"
    try:
        t0 = time.perf_counter()
        pixels = build_store(root, args.chips, args.shards, args.chip_px, seed=0)
        build_s = time.perf_counter() - t0
        np.save(root.parent / "reference.npy", pixels)
        del pixels
        store = ChipStore(root)
        reference = np.load(root.parent / "reference.npy", mmap_mode="r")
        rng = np.random.default_rng(1)
        batches = [rng.choice(args.chips, args.batch, replace=False) for _ in range(args.batches)]
        ref, raw, norm = [], [], []
        for _ in range(args.repeats):
            ref.append(rate(lambda idx: reference[np.sort(idx)], batches))
            raw.append(rate(lambda idx: store.raw("s2", idx), batches))
            norm.append(rate(lambda idx: store.read("s2", idx), batches))
        ratio = max(raw) / max(ref)
        headroom = max(norm) / args.consumption
        result = {
            "benchmark": "chipstore",
            "chips": args.chips,
            "shards": args.shards,
            "chip_px": args.chip_px,
            "store_mb": round(sum(p.stat().st_size for p in root.rglob("*.npy")) / 2**20, 1),
            "build_s": round(build_s, 3),
            "reference_chips_per_s": round(max(ref)),
            "store_raw_chips_per_s": round(max(raw)),
            "store_normalised_chips_per_s": round(max(norm)),
            "ratio_raw_vs_reference": round(ratio, 3),
            "ratio_normalised_vs_raw": round(max(norm) / max(raw), 3),
            "target_normalised_ratio": TARGET_NORMALISED_RATIO,
            "pretraining_consumption_per_s": args.consumption,
            "headroom_normalised_vs_consumption": round(headroom, 1),
            "target_ratio": TARGET_RATIO,
            "target_headroom": TARGET_HEADROOM,
            "pass": ratio >= TARGET_RATIO and headroom >= TARGET_HEADROOM,
            "pass_normalised_ratio": max(norm) / max(raw) >= TARGET_NORMALISED_RATIO,
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
