"""Load: the data stages and pretraining on a simulated world 10x the default one, with peak memory per stage.

The default world of params.yaml is scaled by area (`--scale`, default 10): every AOI side (10 m and
fine grid) grows by sqrt(scale), so the pixel and chip counts grow by about `scale`. Each stage runs
as `msgfm <stage>` in a project folder; the process tree (the stage, and for pretrain the Ray GCS,
raylet and train workers it starts) is polled with psutil every 0.2 s; the peaks of its summed resident
memory and of its anonymous memory (resident minus file-backed and shared pages) are recorded.
Prints one JSON object per stage as it finishes and a summary at the end, and writes the summary to
`--out`. Not part of the test suite (it takes many minutes).

Streaming check: `pair` preallocates the chip store as memory-mapped .npy files and fills it chip by
chip, and pretraining gathers only each batch from the memmaps, so neither stage's anonymous memory
should approach the size of the chip store (`anon_over_store` well below 1, and far below `scale` x the
default world's figure).

    .venv/bin/python benchmarks/bench_load.py [--project DIR] [--scale 10] [--steps 20] [--out load.json]
    .venv/bin/python benchmarks/bench_load.py --project DIR --stages pair pretrain   # again on a built DIR
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml
from _memory import PeakMemory

REPO = Path(__file__).resolve().parents[1]
STAGES = ("simulate", "download", "validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs", "pretrain")


def scaled_params(scale: float, steps: int) -> dict:
    """params.yaml with every AOI side grown by sqrt(scale) (multiples of 6 for the 60 m bands)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    side = math.sqrt(scale)
    sim = params["simulate"]
    sim["size_px"] = int(round(sim["size_px"] * side / 6)) * 6
    sim["fine_size_px"] = int(round(sim["fine_size_px"] * side / 6)) * 6
    params["pretrain"].update(steps=steps, checkpoint_every=steps, log_every=max(1, steps // 4), warmup_steps=2)
    return params


def run_stage(root: Path, stage: str) -> dict:
    """Run one stage to the end, polling its process tree's summed RSS; return wall time and peak RSS."""
    start = time.perf_counter()
    log = open(root / f"{stage}.log", "w")  # noqa: SIM115 - closed below, after the process ends
    proc = subprocess.Popen([str(Path(sys.executable).with_name("msgfm")), stage, "--params", "params.yaml"], cwd=root,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    with PeakMemory(proc.pid) as mem:
        rc = proc.wait()
    log.close()
    if rc != 0:
        raise SystemExit(f"msgfm {stage} failed (exit {rc}); see {root / f'{stage}.log'}")
    return {
        "stage": stage,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(mem.peak["rss"] / 2**20),
        "peak_anon_mb": round(mem.peak["anon"] / 2**20),
    }


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=None, help="project folder (default: a temporary one)")
    parser.add_argument("--scale", type=float, default=10.0, help="world area relative to params.yaml's")
    parser.add_argument("--steps", type=int, default=20, help="pretraining steps")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run, in order")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    args = parser.parse_args()
    root = args.project or Path(tempfile.mkdtemp(prefix="msgfm-load-"))
    root.mkdir(parents=True, exist_ok=True)
    params = scaled_params(args.scale, args.steps)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = []
    for stage in args.stages:
        result = run_stage(root, stage)
        results.append(result)
        print(json.dumps(result), flush=True)
    store = _size(root / params["pair"]["out_dir"])
    manifest = pd.read_parquet(root / params["pair"]["manifest"])
    summary = {
        "project": str(root),
        "scale": args.scale,
        "size_px": params["simulate"]["size_px"],
        "fine_size_px": params["simulate"]["fine_size_px"],
        "aois": len(params["simulate"]["aois"]),
        "chips": len(manifest),
        "chip_store_mb": round(store / 2**20),
        "machine_memory_mb": round(psutil.virtual_memory().total / 2**20),
        "stages": results,
        "rss_over_store": {
            r["stage"]: round(r["peak_rss_mb"] / max(store / 2**20, 1), 3)
            for r in results
            if r["stage"] in ("pair", "pretrain")
        },  # fmt: skip
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in results),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
