"""`msgfm finetune --benchmark NAME --root DIR`: the fine-tuning stage on a real benchmark (msgfm/datasets/benchmarks).

A benchmark split is streamed from its files (msgfm.datasets.streaming.BenchmarkSplit: a torch Dataset read
through DataLoader workers, `finetune.loader_workers`) at its native size (or `finetune.benchmark_px`), its bands
restricted to those of the sensor registry (msgfm.sensors) and normalised like the chip store's; the
training split is the label budget. Every variant is then tuned as on the embedded world, with outputs
under `<finetune.out_dir>/benchmarks/<name>/`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from msgfm.datasets.streaming import BenchmarkSplit, BenchmarkSplitError
from msgfm.datasets.tasks import TaskData, get_task, label_budget
from msgfm.geo.io import atomic_write_json
from msgfm.models.finetuned import variant_missing
from msgfm.training.finetune import FinetuneError, tune_variant

if TYPE_CHECKING:
    from msgfm.config import Params


log = logging.getLogger(__name__)


def _input_size(native: tuple[int, int], asked: int | None, multiple: int) -> tuple[int, int]:
    """The size samples are fed at: `finetune.benchmark_px` when set, else the benchmark's native size,
    rounded down to the patch size the encoder needs."""
    size = (asked, asked) if asked else native
    rounded = (max(multiple, size[0] // multiple * multiple), max(multiple, size[1] // multiple * multiple))
    if rounded != tuple(size):
        log.info(
            "benchmark samples of %s px are resized to %s px (a multiple of the %d px patch)", size, rounded, multiple
        )
    return rounded


def _native_size(ds: Any, kind: str) -> tuple[int, int]:
    """Height and width of the benchmark's first sample: of its target for dense tasks, else of its first input."""
    sample = ds[0]
    key = next(iter(ds.inputs)) if kind == "multilabel" else ds.target_key
    return tuple(int(v) for v in sample[key].shape[-2:])  # type: ignore[return-value]


def benchmark_task_data(params: Params, name: str, root: Path) -> TaskData:
    """Train (label budget), val and test splits of a real benchmark, streamed from its files (BenchmarkSplit)."""
    from msgfm.datasets.benchmarks import create_benchmark

    spec = None
    splits: dict[str, BenchmarkSplit] = {}
    num_classes = 0
    for split in ("train", "val", "test"):
        ds = create_benchmark(name, root, split)
        if len(ds) == 0:
            raise FinetuneError(f"benchmark {name}: split {split!r} under {root} has no samples")
        if spec is None:
            spec = get_task(ds.task)
            native = _native_size(ds, spec.kind)
            size = _input_size(native, params.finetune.benchmark_px, params.model.to_model_config().patch_px)
        index = (
            label_budget(len(ds), params.finetune.label_fraction, params.seed)
            if split == "train"
            else np.arange(len(ds))
        )
        try:
            splits[split] = BenchmarkSplit(ds, index, size, spec.kind, spec.out_sensor, spec.out_bands)
        except BenchmarkSplitError as e:
            raise FinetuneError(str(e)) from None
        num_classes = int(getattr(ds, "num_classes", 0) or len(getattr(ds, "class_names", ())) or 0)
    assert spec is not None
    if spec.kind == "segmentation" and not num_classes:
        raise FinetuneError(f"benchmark {name}: its loader names no classes (num_classes or class_names)")
    spec = dataclasses.replace(spec, inputs=tuple(splits["train"].bands))
    codes = tuple(range(num_classes)) if spec.kind != "image" else ()
    return TaskData(spec=spec, splits=splits, class_codes=codes)  # type: ignore[arg-type]


def run_benchmark_finetune(params: Params, name: str, root: Path, variants: list[str] | None = None) -> dict[str, Any]:
    """Tune every variant on a real benchmark; outputs under <finetune.out_dir>/benchmarks/<name>/."""
    cfg = params.finetune
    torch.set_num_threads(cfg.threads)
    data = benchmark_task_data(params, name, Path(root))
    out = cfg.out_dir / "benchmarks" / name
    bench_params = params.model_copy(update={"finetune": cfg.model_copy(update={"out_dir": out, "metrics_dir": out})})
    summary: dict[str, Any] = {
        "task": data.spec.name,
        "benchmark": name,
        "root": str(root),
        "input_px": list(data.splits["train"].size),
        "samples": {split: len(part) for split, part in data.splits.items()},
        "loader_workers": cfg.loader_workers,
    }
    for variant in variants or cfg.variants:
        missing = variant_missing(params, variant)
        if missing:
            summary[variant] = {"missing": missing}
            continue
        summary[variant] = tune_variant(bench_params, data, variant)
    atomic_write_json(out / f"{data.spec.name}.json", summary)
    return summary
