"""`msgfm finetune --benchmark NAME --root DIR`: the fine-tuning stage on a real benchmark (msgfm/datasets/benchmarks).

A benchmark split is read fully into memory as a `TaskSplit` at its native size (or `finetune.benchmark_px`), its bands
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
import torch.nn.functional as F

from msgfm.datasets.tasks import PAN_RATIO, TaskData, TaskSpec, TaskSplit, get_task, hpf_fuse, label_budget
from msgfm.evaluation.intervals import resample
from msgfm.evaluation.scoring import TRIVIAL, Evidence, score, score_outputs, trivial_outputs
from msgfm.geo.io import atomic_write_json
from msgfm.models.device import resolve_device
from msgfm.models.finetuned import BEST_FILE, WEIGHTS_FILE, checkpoint_mismatch, rebuild_task_model, variant_missing
from msgfm.models.hub import load_weights
from msgfm.sensors import get_sensor
from msgfm.training.finetune import FinetuneError, tune_variant

if TYPE_CHECKING:
    from msgfm.config import Params


log = logging.getLogger(__name__)


def _known_bands(ds: Any) -> dict[str, tuple[str, list[int], tuple[str, ...]]]:
    """Input key -> (sensor, channel indices, band names) of the bands the sensor registry knows."""
    unsupported = [k for k, s in ds.inputs.items() if s is None]
    if unsupported:
        raise FinetuneError(
            f"benchmark {ds.name}: inputs {unsupported} are not sensors of the registry (msgfm.sensors); "
            "fine-tuning on it is not supported yet"
        )
    keep = {}
    for key, sensor in ds.inputs.items():
        known = get_sensor(sensor).band_names
        names = [b for b in ds.band_names[key] if b in known]
        if not names:
            raise FinetuneError(f"benchmark {ds.name}: input {key!r} has no band of sensor {sensor!r} ({known})")
        keep[key] = (sensor, [list(ds.band_names[key]).index(b) for b in names], tuple(names))
    return keep


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, C, H, W) at `size` (bilinear with antialiasing, or nearest for labels); unchanged when it is already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x, size=size, mode=mode, **kwargs)


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


def _benchmark_spec(ds: Any) -> TaskSpec:
    """The task spec of a benchmark: the task's, with the dataset's own target sensor and bands when it names one
    (SpaceNet's WorldView MS: the head corrects the HPF-fused `wv_ms` input)."""
    spec = get_task(ds.task)
    if ds.target_sensor is None:
        return spec
    bands = ds.band_names[ds.target_key]
    return dataclasses.replace(spec, out_sensor=ds.target_sensor, out_bands=bands, residual=ds.target_sensor)


def _hpf_input(ds: Any, sample: dict[str, torch.Tensor], spec: TaskSpec, tile: str) -> dict[str, torch.Tensor]:
    """A pan-sharpening sample whose low-resolution MS is replaced by its HPF fusion with the PAN (msgfm.datasets.
    tasks.hpf_fuse) at the target's size, the image the head corrects, as on the embedded world."""
    ms_key = next(k for k, s in ds.inputs.items() if s == spec.residual)
    pan_key = next(k for k in ds.inputs if k != ms_key)
    ms, pan = sample[ms_key], sample[pan_key]
    if tuple(pan.shape[-2:]) != tuple(d * PAN_RATIO for d in ms.shape[-2:]):
        raise FinetuneError(
            f"benchmark {ds.name} sample {tile}: PAN {tuple(pan.shape[-2:])} px is not {PAN_RATIO} x the MS "
            f"{tuple(ms.shape[-2:])} px; pan-sharpening here assumes WorldView's ratio {PAN_RATIO}"
        )
    full = get_sensor(spec.residual).full_scale
    fused = hpf_fuse(ms[None].float(), pan[None].float())[0].clamp(0.0, full)
    return {**sample, ms_key: fused}


def _benchmark_split(ds: Any, index: np.ndarray, params: Params) -> tuple[TaskSplit, TaskSpec]:
    """Samples `index` of a benchmark dataset as a TaskSplit (at native resolution unless `finetune.benchmark_px`
    says otherwise), and the task spec for it."""
    spec = _benchmark_spec(ds)
    keep = _known_bands(ds)
    images: dict[str, list[torch.Tensor]] = {keep[k][0]: [] for k in keep}
    targets = []
    for i in index.tolist():
        sample = ds[int(i)]
        if spec.name == "pansharpening":
            sample = _hpf_input(ds, sample, spec, str(ds.tiles[int(i)] if hasattr(ds, "tiles") else i))
        for key, (sensor, channels, names) in keep.items():
            pixels = sample[key][channels].numpy()
            images[sensor].append(torch.from_numpy(get_sensor(sensor).normalise(pixels, names)))
        target = sample[ds.target_key]
        if spec.kind == "image":
            names = ds.band_names[ds.target_key]
            order = [list(names).index(b) for b in spec.out_bands]
            target = torch.from_numpy(get_sensor(spec.out_sensor).normalise(target[order].numpy(), spec.out_bands))
        targets.append(target)
    native = (
        tuple(targets[0].shape[-2:]) if spec.kind != "multilabel" else tuple(next(iter(images.values()))[0].shape[-2:])
    )
    size = _input_size(native, params.finetune.benchmark_px, params.model.to_model_config().patch_px)
    stacked = {s: torch.stack([_resize(x[None], size, "bilinear")[0] for x in v]) for s, v in images.items()}
    if spec.kind == "image":
        target = torch.stack([_resize(t[None], size, "bilinear")[0] for t in targets])
    elif spec.kind == "segmentation":
        target = torch.stack([_resize(t[None, None].float(), size, "nearest")[0, 0].long() for t in targets])
    else:
        target = torch.stack(targets)
    bands = {keep[k][0]: keep[k][2] for k in keep}
    present = {s: torch.ones(len(index), dtype=torch.bool) for s in stacked}
    spec = dataclasses.replace(spec, inputs=tuple(stacked))
    return TaskSplit(stacked, bands, present, target, [str(i) for i in index.tolist()]), spec


def benchmark_task_data(params: Params, name: str, root: Path) -> TaskData:
    """Train (label budget), val and test splits of a real benchmark, read fully into memory."""
    from msgfm.datasets.benchmarks import create_benchmark

    splits: dict[str, TaskSplit] = {}
    spec = None
    num_classes = 0
    for split in ("train", "val", "test"):
        ds = create_benchmark(name, root, split)
        if len(ds) == 0:
            raise FinetuneError(f"benchmark {name}: split {split!r} under {root} has no samples")
        index = (
            label_budget(len(ds), params.finetune.label_fraction, params.seed)
            if split == "train"
            else np.arange(len(ds))
        )
        splits[split], spec = _benchmark_split(ds, index, params)
        num_classes = int(getattr(ds, "num_classes", 0) or len(getattr(ds, "class_names", ())) or 0)
    if spec.kind == "segmentation" and not num_classes:
        num_classes = int(splits["train"].target[splits["train"].target < 255].max()) + 1
    return TaskData(spec=spec, splits=splits, class_codes=tuple(range(num_classes)) if spec.kind != "image" else ())


def benchmark_test_scores(params: Params, data: TaskData, out: Path, variants: list[str]) -> dict[str, Any]:
    """Test metrics (n, bootstrap interval over samples) of each tuned variant's checkpoint under `out` and of the
    task's trivial baselines (pan-sharpening: HPF and bicubic), and each variant's paired gain over each baseline."""
    test, cfg = data.splits["test"], params.evaluate
    ids = test.ids or [str(i) for i in range(len(test))]
    ev = Evidence(resample(ids, cfg.bootstrap_resamples, params.seed, cfg.confidence), {"samples": len(test)})
    scored = {name: score_outputs(data, test, trivial_outputs(name, data, test)) for name in TRIVIAL[data.spec.name]}
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
            results[variant] = {"missing": vdata}
            continue
        mine = score(model.to(resolve_device(params.finetune.device)), vdata, vdata.splits["test"], 32)
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
    summary: dict[str, Any] = {"task": data.spec.name, "benchmark": name, "root": str(root)}
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
