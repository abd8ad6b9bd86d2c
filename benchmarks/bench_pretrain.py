"""Pretraining throughput: 2 Ray Train workers (DDP, 1 thread each) against the same training loop in
one plain process with 2 threads, on the same chips, in one run. Prints JSON.

Target (issue 5): Ray samples/s at least 0.8x the single process, so the distribution layer does not
eat the machine. Per-worker peak RSS is sampled from the worker processes while they train.

Usage: python benchmarks/bench_pretrain.py [--project DIR] [--steps N]
DIR must hold the outputs of the data stages (data/chips, data/manifest.parquet, data/gates/pairs.parquet),
as after `dvc repro validate_pairs`; default: the repository itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil


def _peak_worker_rss(stop: threading.Event, peaks: dict[int, int]) -> None:
    """Poll RayTrainWorker processes and keep each one's peak resident memory."""
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "RayTrainWorker" in cmd and proc.info["memory_info"] is not None:
                peaks[proc.info["pid"]] = max(peaks.get(proc.info["pid"], 0), proc.info["memory_info"].rss)
        stop.wait(0.5)


def _run(params, workers: int, threads: int, storage: Path) -> dict:
    """One training run of `params.pretrain.steps` steps; samples/s as measured inside the loop."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from msgfm.training.pretrain import train_loop

    cfg = params.pretrain.model_copy(update={"threads_per_worker": threads, "workers": max(workers, 1)})
    p = params.model_copy(update={"pretrain": cfg})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"params": p.model_dump(mode="json"), "resume_from": None},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name=f"bench-{workers}x{threads}", storage_path=str(storage)),
    )
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=_peak_worker_rss, args=(stop, peaks), daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "samples_per_s": round(result.metrics["samples_per_s"], 2),
        "wall_s_with_startup": round(wall, 1),
        "peak_rss_mb_per_worker": sorted(round(v / 2**20) for v in peaks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    os.chdir(args.project)

    import ray

    from msgfm.config import load_params

    params = load_params("params.yaml")
    absolute = {k: getattr(params.pretrain, k).resolve() for k in ("chips_dir", "manifest")}
    cfg = params.pretrain.model_copy(
        update={**absolute, "steps": args.steps, "checkpoint_every": args.steps, "log_every": 10**6}
    )
    gates = params.gates.model_copy(update={"dir": params.gates.dir.resolve()})
    params = params.model_copy(update={"pretrain": cfg, "gates": gates})
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            single = _run(params, workers=0, threads=2, storage=Path(storage))  # in-process: the plain loop
            distributed = _run(params, workers=2, threads=1, storage=Path(storage))
    finally:
        ray.shutdown()
    ratio = distributed["samples_per_s"] / single["samples_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "pretrain_throughput",
                "model": params.model.name,
                "chip_px": params.model.chip_px,
                "batch_size_per_worker": cfg.batch_size,
                "steps": args.steps,
                "single_process_2_threads": single,
                "ray_2_workers_1_thread": distributed,
                "ratio_ray_to_single": round(ratio, 3),
                "target_ratio": 0.8,
                "meets_target": ratio >= 0.8,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
