"""Streaming: `msgfm finetune --benchmark bigearthnet` on generated BigEarthNet v1.0 folders of 2,000 and 20,000
patches, with the peak memory of each run; the peak must not grow with the dataset.

A folder in the publisher's layout (msgfm/datasets/benchmarks/bigearthnet.py: `BigEarthNet-v1.0/<patch>/` with
12 band GeoTIFFs and the labels json, `BigEarthNet-S1-v1.0/<patch>/` with VV, VH and the json naming its
`corresponding_s2_patch`, official one-column `train.csv`/`val.csv`/`test.csv`) is made by hard-linking the
band files of the four real sample patches of tests/data/bigearthnet-v1 under new patch names (so 20,000
patches take under a minute and almost no disk); 98% of the patches are train, 1% val, 1% test. Each size runs `msgfm
finetune --benchmark bigearthnet --variant scratch` in its own project folder: one trial of one epoch on a 1%
label budget, of the same number of steps (`--steps`, batch 8) at every size, so the small run cycles its few
patches and the large one streams ten times as many, then a full validation pass over the streamed val split,
with `finetune.loader_workers` DataLoader workers. The process tree (the CLI and its workers) is polled with
psutil every 0.25 s; the peaks of its summed proportional set size (PSS: pages a DataLoader worker shares with
the process it was forked from counted once), of its summed resident memory and of the CLI process's own
resident memory are recorded. Prints one JSON object: both runs, the ratio of the large run's peaks to the small
run's (the reference measured in the same run), and what reading every split into memory would have held.

    .venv/bin/python benchmarks/bench_stream.py [--sizes 2000 20000] [--workers 2] [--out stream.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _memory import PeakMemory

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests/data/bigearthnet-v1"
S2_DIR, S1_DIR = "BigEarthNet-v1.0", "BigEarthNet-S1-v1.0"
SPLITS = (("train", 0.98), ("val", 0.01), ("test", 0.01))
SAMPLE_BYTES = (12 + 2) * 120 * 120 * 4 + 19 * 4
"""float32 bytes of one patch in memory at 120 px (12 S2 bands, VV, VH, 19 labels)."""


def _templates() -> list[tuple[Path, Path]]:
    """(S2 folder, S1 folder) of each real sample patch, joined through the S1 json."""
    s1_of = {}
    for folder in sorted((SAMPLES / S1_DIR).iterdir()):
        meta = json.loads((folder / f"{folder.name}_labels_metadata.json").read_text())
        s1_of[meta["corresponding_s2_patch"]] = folder
    return [(SAMPLES / S2_DIR / s2, s1_of[s2]) for s2 in sorted(s1_of)]


def _link_patch(src: Path, dst_root: Path, name: str, extra: dict | None = None) -> None:
    """Hard-link every band file of patch folder `src` as patch `name` under `dst_root`; write its json anew."""
    dst = dst_root / name
    dst.mkdir()
    for f in src.iterdir():
        suffix = f.name[len(src.name) :]
        if f.suffix == ".json":
            meta = {**json.loads(f.read_text()), **(extra or {})}
            (dst / f"{name}{suffix}").write_text(json.dumps(meta))
        else:
            os.link(f, dst / f"{name}{suffix}")


def make_folder(root: Path, n: int) -> dict[str, int]:
    """A BigEarthNet v1.0 folder of `n` patches at `root` (hard links to the real samples); split sizes."""
    local = root / "_templates"  # links need one file system: copy the four real patches in first
    templates = []
    for s2, s1 in _templates():
        shutil.copytree(s2, local / S2_DIR / s2.name)
        shutil.copytree(s1, local / S1_DIR / s1.name)
        templates.append((local / S2_DIR / s2.name, local / S1_DIR / s1.name))
    (root / S2_DIR).mkdir()
    (root / S1_DIR).mkdir()
    names = []
    for i in range(n):
        s2, s1 = templates[i % len(templates)]
        row, col = divmod(i, 1000)
        s2_name = f"{s2.name.rsplit('_', 2)[0]}_{row}_{col}"
        s1_name = f"{s1.name.rsplit('_', 2)[0]}_{row}_{col}"
        _link_patch(s2, root / S2_DIR, s2_name)
        _link_patch(s1, root / S1_DIR, s1_name, {"corresponding_s2_patch": s2_name})
        names.append(s2_name)
    sizes, start = {}, 0
    for split, share in SPLITS:
        count = int(round(share * n)) if split != "test" else n - start
        (root / f"{split}.csv").write_text("".join(f"{p}\n" for p in names[start : start + count]))
        sizes[split], start = count, start + count
    return sizes


def _project(folder: Path, workers: int, label_fraction: float, steps: int) -> None:
    """params.yaml for one scratch trial of one epoch, outputs inside `folder`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"].update(
        out_dir=str(folder / "models"),
        metrics_dir=str(folder / "metrics"),
        variants=["scratch"],
        trials=1,
        epochs=1,
        min_steps_per_epoch=steps,  # the same steps at every size: only what is streamed differs
        eval_batch_size=8,
        batch_sizes=[8],
        freeze_choices=[False],
        label_fraction=label_fraction,
        loader_workers=workers,
        threads=1,
        device="cpu",
    )
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_size(work: Path, n: int, workers: int, label_fraction: float, steps: int) -> dict:
    """Generate a folder of `n` patches and fine-tune on it, polling the process tree's memory."""
    root, project = work / f"ben{n}", work / f"project{n}"
    root.mkdir()
    project.mkdir()
    start = time.perf_counter()
    sizes = make_folder(root, n)
    made = time.perf_counter() - start
    _project(project, workers, label_fraction, steps)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "msgfm.cli", "finetune", "--benchmark", "bigearthnet", "--root", str(root)]
    cmd += ["--variant", "scratch", "--params", "params.yaml"]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(child.pid, interval=0.25, pss=True) as mem:
        output, _ = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"finetune on {n} patches failed ({child.returncode}):\n{output[-4000:]}")
    summary = json.loads((project / "models/benchmarks/bigearthnet/classification.json").read_text())
    train_samples = summary["scratch"]["train_samples"]
    return {
        "patches": n,
        "splits": sizes,
        "train_samples": train_samples,
        "val_samples": sizes["val"],
        "make_folder_s": round(made, 1),
        "finetune_wall_s": round(wall, 1),
        "peak_pss_mib": mem.mib("pss"),
        "peak_rss_summed_mib": mem.mib("rss"),
        "peak_main_rss_mib": mem.mib("main_rss"),
        "processes": mem.peak["processes"],
        "val_mAP_micro": summary["scratch"]["value"],
        "in_memory_mib": round((train_samples + sizes["val"] + sizes["test"]) * SAMPLE_BYTES / 2**20, 1),
    }


def main() -> None:
    """Run every size, print and write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--workers", type=int, default=2, help="finetune.loader_workers")
    parser.add_argument("--label-fraction", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps at every size (1%% of 20,000 / 8)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        runs = [run_size(Path(tmp), n, args.workers, args.label_fraction, args.steps) for n in args.sizes]
    small, large = runs[0], runs[-1]
    result = {
        "benchmark": "stream",
        "loader_workers": args.workers,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "pss_ratio_large_over_small": round(large["peak_pss_mib"] / small["peak_pss_mib"], 3),
        "main_rss_ratio_large_over_small": round(large["peak_main_rss_mib"] / small["peak_main_rss_mib"], 3),
        "patch_ratio": large["patches"] / small["patches"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
