"""Fine-tuning step throughput per task, and evaluation throughput, against the same head on a frozen encoder.

For each of the four tasks a TaskModel (msgfm_tiny encoder + the task's head, as `msgfm finetune` builds
it) runs training steps on a batch shaped like the task's samples (random normalised pixels, real band
lists): full fine-tuning (encoder trained, layer-wise lr groups) interleaved with the reference, the same
head on a frozen encoder (what a `freeze: true` trial costs). The median step time of each is compared, so
load from other processes hits both alike. Evaluation throughput (eval mode, no gradients, the metrics'
`update`) is measured on the same model. Prints one JSON object.

    .venv/bin/python benchmarks/bench_finetune.py [--batch 16] [--steps 6] [--chip 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from msgfm.datasets.tasks import PAN_BANDS, TASKS, TaskSplit, get_task
from msgfm.models import create_model
from msgfm.models.heads import build_task_model
from msgfm.sensors import S2_L2A_BANDS, get_sensor
from msgfm.training.loop import Hyper, param_groups


def task_batch(task: str, batch: int, chip: int, num_classes: int) -> TaskSplit:
    """A random batch with the task's inputs, bands and target shape."""
    spec = get_task(task)
    bands = {s: PAN_BANDS if task == "pansharpening" else get_sensor(s).band_names for s in spec.inputs}
    bands = {s: (S2_L2A_BANDS if s == "s2" and task != "pansharpening" else tuple(b)) for s, b in bands.items()}
    images = {s: torch.randn(batch, len(b), chip, chip) for s, b in bands.items()}
    present = {s: torch.ones(batch, dtype=torch.bool) for s in bands}
    if spec.kind == "multilabel":
        target = (torch.rand(batch, num_classes) < 0.4).float()
    elif spec.kind == "segmentation":
        target = torch.randint(0, num_classes, (batch, chip, chip))
    else:
        target = torch.randn(batch, len(spec.out_bands), chip, chip)
    return TaskSplit(images, bands, present, target)


def step_fn(model: torch.nn.Module, task: str, data: TaskSplit, freeze: bool):
    """One optimizer step of the model as train_model runs it (frozen: encoder without gradients)."""
    spec = get_task(task)
    for p in model.encoder.parameters():
        p.requires_grad_(not freeze)
    optimizer = torch.optim.AdamW(param_groups(model, Hyper(1e-4, 0.01, 0.8, freeze, len(data))))
    index = torch.arange(len(data))

    def step() -> None:
        model.train()
        if freeze:
            model.encoder.eval()
        images, present, target = data.batch(index)
        out, aux = model(images, data.bands, present=present, return_aux=True)
        loss = spec.loss(out, target) + (0.0 if freeze else 0.01 * aux)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--chip", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for task in TASKS:
        num_classes = 9
        spec = get_task(task)
        data = task_batch(task, args.batch, args.chip, num_classes)
        full = build_task_model(spec, create_model("msgfm_tiny", chip_px=args.chip).encoder, num_classes)
        frozen = build_task_model(spec, create_model("msgfm_tiny", chip_px=args.chip).encoder, num_classes)
        steps = {"full": step_fn(full, task, data, False), "frozen": step_fn(frozen, task, data, True)}
        for fn in steps.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.steps):
            for name, fn in steps.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        full.eval()
        metrics = spec.metrics(num_classes)
        eval_times = []
        with torch.no_grad():
            for _ in range(args.steps):
                start = time.perf_counter()
                images, present, target = data.batch(torch.arange(len(data)))
                out = full(images, data.bands, present=present)
                if spec.kind == "image":
                    metrics.update(spec.to_metric_space(out), spec.to_metric_space(target))
                else:
                    metrics.update(out, target.long())
                eval_times.append(time.perf_counter() - start)
        full_s, frozen_s = statistics.median(times["full"]), statistics.median(times["frozen"])
        results[task] = {
            "full_step_s": round(full_s, 4),
            "frozen_step_s": round(frozen_s, 4),
            "full_samples_per_s": round(args.batch / full_s, 1),
            "frozen_samples_per_s": round(args.batch / frozen_s, 1),
            "full_vs_frozen_throughput": round(frozen_s / full_s, 3),
            "eval_samples_per_s": round(args.batch / statistics.median(eval_times), 1),
        }
    print(json.dumps({"batch": args.batch, "chip_px": args.chip, "threads": args.threads, "tasks": results}, indent=2))


if __name__ == "__main__":
    main()
