"""GPU smoke test: one fine-tuning epoch and an embedding pass at msgfm_base size on the chosen device.

Fine-tuning runs the real loop (`msgfm.training.loop.train_model`, as `msgfm finetune` does: bf16 autocast
on GPU) on random classification samples with real S2 band lists; the reference, measured in the same
run, is a bare loop of the same steps (no validation, no bookkeeping), so `finetune_vs_bare` is the
loop's efficiency. The embedding pass runs the encoder over the same chips. Run it where a GPU is lent
(it also runs on CPU, small, to check it works):

    .venv/bin/python benchmarks/gpu_smoke.py --device cuda [--model msgfm_base] [--samples 256] [--batch 32]
    .venv/bin/python benchmarks/gpu_smoke.py --device cpu --model msgfm_tiny --samples 16 --batch 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from msgfm.datasets.tasks import TaskData, TaskSplit, get_task
from msgfm.models import count_parameters, create_model
from msgfm.models import device as device_mod
from msgfm.models.device import autocast, to_device
from msgfm.models.heads import build_task_model
from msgfm.sensors import S2_L2A_BANDS
from msgfm.training.loop import Hyper, train_model

CLASSES = 9


def classification_data(samples: int, chip: int) -> TaskData:
    """Random normalised S2 chips with multi-label targets, split in train and val."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> TaskSplit:
        images = {"s2": torch.randn(n, len(S2_L2A_BANDS), chip, chip, generator=gen)}
        target = (torch.rand(n, CLASSES, generator=gen) < 0.4).float()
        return TaskSplit(images, {"s2": S2_L2A_BANDS}, {"s2": torch.ones(n, dtype=torch.bool)}, target)

    return TaskData(get_task("classification"), {"train": split(samples), "val": split(max(8, samples // 4))},
                    tuple(range(CLASSES)))  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> tuple[float, object]:
    """Wall time of fn() with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def bare_epoch(model: torch.nn.Module, data: TaskData, batch: int, device: torch.device) -> None:
    """The reference: the same steps as one epoch of train_model, as a plain loop (no validation, no bookkeeping)."""
    train = data.splits["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(0, len(train) - batch + 1, batch):
        images, present, target = to_device(train.batch(torch.arange(i, i + batch)), device)
        with autocast(device):
            out = model(images, train.bands, present=present)
        loss = data.spec.loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def run(model_name: str, device: torch.device, samples: int, batch: int, chip: int) -> dict:
    """One fine-tuning epoch (ours and the bare reference) and one embedding pass; throughput and peak memory."""
    data = classification_data(samples, chip)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_task_model(data.spec, create_model(model_name, chip_px=chip).encoder, CLASSES).to(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hp = Hyper(1e-4, 0.05, 0.75, False, batch)
    ours_s, (value, _, _) = timed(device, lambda: train_model(fresh(), data, hp, 1, seed=0, eval_batch_size=batch))
    bare_s, _ = timed(device, lambda: bare_epoch(fresh(), data, batch, device))
    model = fresh().eval()
    x = data.splits["train"].images["s2"]

    def embed() -> None:
        with torch.no_grad(), autocast(device):
            for i in range(0, len(x), batch):
                model.encoder({"s2": x[i : i + batch].to(device)}, {"s2": S2_L2A_BANDS}).features["s2"][-1].float()

    embed_s, _ = timed(device, embed)
    return {
        "finetune_epoch_s": round(ours_s, 3),
        "finetune_samples_per_s": round(samples / ours_s, 1),
        "bare_epoch_s": round(bare_s, 3),
        "finetune_vs_bare": round(bare_s / ours_s, 3),
        "val_mAP_micro": round(value, 4),
        "embed_chips_per_s": round(len(x) / embed_s, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=device_mod.DEVICE_CHOICES)
    parser.add_argument("--model", default="msgfm_base")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chip", type=int, default=64)
    args = parser.parse_args()
    device = device_mod.resolve_device(args.device)
    params = count_parameters(create_model(args.model, chip_px=args.chip))
    result = run(args.model, device, args.samples, args.batch, args.chip)
    print(json.dumps({
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "bf16_autocast": device.type == "cuda",
        "model": args.model, "parameters": params, "samples": args.samples, "batch": args.batch, "chip_px": args.chip,
        **result,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
