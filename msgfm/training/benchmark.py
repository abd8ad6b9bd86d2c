"""`msgfm finetune --benchmark NAME --root DIR`: the fine-tuning stage on a real benchmark (msgfm/datasets/benchmarks).

A benchmark split is streamed from its files (msgfm.datasets.streaming.BenchmarkSplit: a torch Dataset read
through DataLoader workers, `finetune.loader_workers`) at its native size (or `finetune.benchmark_px`), its bands
restricted to those of the sensor registry (msgfm.sensors) and normalised like the chip store's; the
training split is the label budget. Every variant is then tuned as on the embedded world, with outputs
under `<finetune.out_dir>/benchmarks/<name>/`, and scored with the task's trivial baselines on the test split
(`"test"` in `<task>.json`: n, bootstrap intervals over samples, paired gains; msgfm.evaluation.scoring).
A benchmark whose inputs are sensors added for fine-tuning (SpaceNet's WorldView PAN/MS) gets them grown on
every variant's encoder (msgfm.models.extend); a pan-sharpening sample's MS input is its HPF fusion with the
PAN, as on the embedded world.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from msgfm.datasets.streaming import BenchmarkSplit, BenchmarkSplitError
from msgfm.datasets.tasks import TaskData, TaskSpec, get_task, label_budget
from msgfm.evaluation.intervals import resample
from msgfm.evaluation.scoring import TRIVIAL, Evidence, model_predictor, score_batches, trivial_predictor
from msgfm.geo.io import atomic_write_json
from msgfm.models.device import resolve_device
from msgfm.models.finetuned import (
    BEST_FILE,
    NOT_APPLICABLE,
    WEIGHTS_FILE,
    checkpoint_mismatch,
    rebuild_task_model,
    variant_missing,
)
from msgfm.models.hub import load_weights
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


def _benchmark_spec(ds: Any) -> TaskSpec:
    """The task spec of a benchmark: the task's, with the dataset's own target sensor and bands when it names one
    (SpaceNet's WorldView MS: the head corrects the HPF-fused `wv_ms` input)."""
    spec = get_task(ds.task)
    if ds.target_sensor is None:
        return spec
    bands = ds.band_names[ds.target_key]
    return dataclasses.replace(spec, out_sensor=ds.target_sensor, out_bands=bands, residual=ds.target_sensor)


def _streamed_split(ds: Any, index: np.ndarray, size: tuple[int, int], spec: TaskSpec) -> BenchmarkSplit:
    """Samples `index` of `ds` as a BenchmarkSplit (pan-sharpening: the MS input HPF-fused with the PAN); its
    first sample is read here, so a benchmark that cannot be fed fails before training, naming the sample."""
    hpf = spec.residual if spec.name == "pansharpening" else None
    try:
        split = BenchmarkSplit(ds, index, size, spec.kind, spec.out_sensor, spec.out_bands, hpf)
        split[0]
    except BenchmarkSplitError as e:
        raise FinetuneError(str(e)) from None
    return split


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
            spec = _benchmark_spec(ds)
            native = _native_size(ds, spec.kind)
            size = _input_size(native, params.finetune.benchmark_px, params.model.to_model_config().patch_px)
        index = (
            label_budget(len(ds), params.finetune.label_fraction, params.seed)
            if split == "train"
            else np.arange(len(ds))
        )
        splits[split] = _streamed_split(ds, index, size, spec)
        num_classes = int(getattr(ds, "num_classes", 0) or len(getattr(ds, "class_names", ())) or 0)
    assert spec is not None
    if spec.kind == "segmentation" and not num_classes:
        raise FinetuneError(f"benchmark {name}: its loader names no classes (num_classes or class_names)")
    spec = dataclasses.replace(spec, inputs=tuple(splits["train"].bands))
    codes = tuple(range(num_classes)) if spec.kind != "image" else ()
    return TaskData(spec=spec, splits=splits, class_codes=codes)  # type: ignore[arg-type]


def benchmark_test_scores(params: Params, data: TaskData, out: Path, variants: list[str]) -> dict[str, Any]:
    """Test metrics (n, bootstrap interval over samples) of each tuned variant's checkpoint under `out` and of the
    task's trivial baselines (pan-sharpening: HPF and bicubic), and each variant's paired gain over each baseline;
    the test split is streamed batch by batch (`finetune.loader_workers`)."""
    test, cfg = data.splits["test"], params.evaluate
    batch, workers = params.finetune.eval_batch_size, params.finetune.loader_workers
    ids = [str(i) for i in range(len(test))]
    draws = resample(ids, cfg.bootstrap_resamples, params.seed, cfg.confidence)
    ev = Evidence(draws, {"samples": len(test)}, min_effect=dict(cfg.min_effect))
    scored = {
        name: score_batches(data, test, trivial_predictor(name, data, batch, workers), batch, workers)
        for name in TRIVIAL[data.spec.name]
    }
    results: dict[str, Any] = {name: ev.record(s) for name, s in scored.items()}
    for variant in variants:
        folder = out / data.spec.name / variant
        mismatch = checkpoint_mismatch(folder)
        if mismatch:
            results[variant] = {"missing": mismatch}
            continue
        best = json.loads((folder / BEST_FILE).read_text())
        model = load_weights(rebuild_task_model(best, data.spec), folder / WEIGHTS_FILE)
        vdata = data.only(model.encoder.sensors)
        if isinstance(vdata, str):
            results[variant] = {NOT_APPLICABLE: vdata}
            continue
        vtest = vdata.splits["test"]
        predictor = model_predictor(model.to(resolve_device(params.finetune.device)), vdata, vtest.bands)
        mine = score_batches(vdata, vtest, predictor, batch, workers)
        results[variant] = ev.record(mine)
        for name in TRIVIAL[data.spec.name]:
            results[f"{variant} vs {name}"] = ev.compare(mine, scored[name], data.spec.name).record()
    return results


def run_benchmark_finetune(params: Params, name: str, root: Path, variants: list[str] | None = None) -> dict[str, Any]:
    """Tune every variant on a real benchmark, then score them and the trivial baselines on its test split;
    outputs under <finetune.out_dir>/benchmarks/<name>/."""
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
    tuned = [v for v in variants or cfg.variants if "value" in summary.get(v, {})]
    summary["test"] = benchmark_test_scores(params, data, out, tuned)
    atomic_write_json(out / f"{data.spec.name}.json", summary)
    return summary
