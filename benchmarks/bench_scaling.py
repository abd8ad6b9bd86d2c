"""Measured scaling: the data stages and a short pretraining on the simulated world at 1x, 4x and 16x
its default area, with 1 and 2 workers; per stage wall time, items/s and peak RSS (JSON).

Each scale gets a temporary project: params.yaml with `simulate.size_px` and `fine_size_px` multiplied
by sqrt(scale) (same places and dates, more ground per place), then `msgfm simulate`, `download`,
`validate_raw`, `coregister`, `validate_coreg`, `pair`, `validate_pairs` and `pretrain` run as the
pipeline runs them, each in its own process. A stage with a parallel knob runs once per worker count
(download: `download.workers` threads; pretrain: `pretrain.workers` Ray Train ranks); the others have
no parallel path yet (issue 18 item 1) and run once. Peak RSS is the largest sum of resident memory
over the stage's process tree (Ray's raylet and workers included), sampled at 5 Hz.

Items per stage: download and validate_raw count acquisitions, coregister rasters written, pair and
validate_pairs chips, pretrain samples seen (steps x batch x workers). `--plot` draws seconds per 1,000
items against scale (docs/img/scaling.png); `paper_scale` extrapolates each stage linearly from its
per-item cost at the largest scale to 2 million chips (msGFM's pretraining set), in core-hours.

    .venv/bin/python benchmarks/bench_scaling.py [--scales 1 4 16] [--workers 1 2] [--steps 20]
        [--plot docs/img/scaling.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from _memory import PeakMemory

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("simulate", "download", "validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs")
PARALLEL = {"download": ("download", "workers"), "pretrain": ("pretrain", "workers")}
OUTPUTS = {"download": ("data/raw",), "pretrain": ("data/models/pretrain",)}
"""What a parallel stage resumes from: removed before each worker count runs, so none of them resumes."""
PAPER_CHIPS = 2_000_000


def scaled_params(scale: float, steps: int) -> dict:
    """params.yaml with the simulated world's area multiplied by `scale` and a short pretraining."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    side = math.sqrt(scale)
    params["simulate"]["size_px"] = int(round(params["simulate"]["size_px"] * side / 32) * 32)
    params["simulate"]["fine_size_px"] = int(round(params["simulate"]["fine_size_px"] * side / 32) * 32)
    params["pretrain"].update(steps=steps, checkpoint_every=steps, warmup_steps=min(5, steps), log_every=steps)
    return params


def run_stage(stage: str, project: Path) -> dict:
    """One stage as its own process in `project`; wall seconds and peak tree RSS (MiB)."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.monotonic()
    child = subprocess.Popen(
        [str(Path(sys.executable).absolute()), "-m", "msgfm.cli", stage],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    with PeakMemory(child.pid) as mem:
        output, _ = child.communicate()
    if child.returncode:
        tail = output.decode(errors="replace").splitlines()[-20:]
        raise SystemExit(f"bench_scaling: `msgfm {stage}` failed in {project}:\n" + "\n".join(tail))
    return {"seconds": round(time.monotonic() - started, 2), "peak_rss_mib": mem.mib("rss")}


def count_items(stage: str, project: Path, params: dict) -> int:
    """What the stage processed, read from its outputs (see the module docstring)."""
    data = project / "data"
    if stage in ("simulate", "download", "validate_raw"):
        return len(pd.read_parquet(data / "raw/acquisitions.parquet")) if stage != "simulate" else _sim_items(data)
    if stage in ("coregister", "validate_coreg"):
        return len(pd.read_parquet(data / "coreg/rasters.parquet"))
    if stage in ("pair", "validate_pairs"):
        return len(pd.read_parquet(data / "manifest.parquet"))
    return params["pretrain"]["steps"] * params["pretrain"]["batch_size"] * params["pretrain"]["workers"]


def _train_rate(stage: str, project: Path) -> dict:
    """Pretraining's own samples/s over its training steps (without Ray's start-up), from pretrain.json."""
    if stage != "pretrain":
        return {}
    metrics = json.loads((project / "data/metrics/pretrain.json").read_text())
    return {"train_samples_per_s": metrics["samples_per_s"]}


def _sim_items(data: Path) -> int:
    """Acquisitions the simulator published (its catalog's item files)."""
    return sum(1 for p in (data / "source").rglob("*.json") if p.name not in ("catalog.json", "collection.json"))


def measure_scale(scale: float, workers: list[int], steps: int) -> list[dict]:
    """Every stage at one scale: a row per (stage, workers) run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"msgfm-scale{scale:g}-") as tmp:
        project = Path(tmp)
        params = scaled_params(scale, steps)
        for stage in (*DATA_STAGES, "pretrain"):
            for w in workers if stage in PARALLEL else workers[:1]:
                if stage in PARALLEL:
                    section, key = PARALLEL[stage]
                    params[section][key] = w
                for out in OUTPUTS.get(stage, ()):
                    shutil.rmtree(project / out, ignore_errors=True)
                (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                timing = run_stage(stage, project)
                items = count_items(stage, project, params)
                rows.append(
                    {"scale": scale, "stage": stage, "workers": w, "items": items, **timing}
                    | {"items_per_s": round(items / timing["seconds"], 2)}
                    | _train_rate(stage, project)
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def paper_scale(rows: list[dict]) -> dict:
    """Core-hours per stage for 2 million chips, linear in items from the largest scale's per-item cost."""
    largest = max(r["scale"] for r in rows)
    at = [r for r in rows if r["scale"] == largest]
    chips = next(r["items"] for r in at if r["stage"] == "pair")
    factor = PAPER_CHIPS / chips
    out = {}
    for r in at:
        if r["workers"] != min(x["workers"] for x in at if x["stage"] == r["stage"]):
            continue
        cores = r["workers"] if r["stage"] in PARALLEL else 1
        if r["stage"] == "pretrain":  # one pass over 2M chips at the measured training samples/s
            core_h = PAPER_CHIPS / r["train_samples_per_s"] * cores / 3600
        else:
            core_h = r["seconds"] * factor * cores / 3600
        out[r["stage"]] = {"core_hours": round(core_h, 1), "peak_rss_mib_per_worker": r["peak_rss_mib"]}
    out["assumptions"] = (
        f"linear in items from scale {largest:g} ({chips} chips, x{factor:.0f}); pretrain: one epoch of "
        f"{PAPER_CHIPS} chips at msgfm_tiny CPU speed; data stages single-core"
    )
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Seconds per 1,000 items against scale, one line per stage and worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (stage, workers), group in frame.groupby(["stage", "workers"], sort=False):
        label = f"{stage} ({workers} workers)" if stage in PARALLEL else stage
        ax.plot(group["scale"], 1000 / group["items_per_s"], marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="world area (x default)", ylabel="seconds per 1,000 items")
    ax.set_xticks(sorted(frame["scale"].unique()), [f"{s:g}x" for s in sorted(frame["scale"].unique())])
    ax.legend(fontsize=7, ncols=2)
    ax.set_title("msgfm stages on 2 CPU cores: cost per item as the world grows")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="pretraining steps per run")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = [row for scale in args.scales for row in measure_scale(scale, args.workers, args.steps)]
    if args.plot:
        plot(rows, args.plot)
    loads = [round(load, 2), round(os.getloadavg()[0], 2)]
    result = {"rows": rows, "paper_scale": paper_scale(rows), "load_1min_start_end": loads}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
