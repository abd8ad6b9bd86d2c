"""`msgfm pretrain`: cross-sensor masked image modeling on Ray Train (DDP), resumable.

The driver connects to Ray (a local instance sized to the machine, or the cluster named by
`ray.address` / RAY_ADDRESS), runs `train_loop` on `pretrain.workers` ranks and, when training is
done, turns the last checkpoint into the stage outputs: the model (safetensors + config.json), the
metrics JSON, the loss curve in dvclive's format and a PNG of reconstructions.

Resume: checkpoints go to `pretrain.checkpoint_dir/<run name>`, where the run name hashes everything
that shapes the run (params of model and pretraining, the chip manifest). Running the stage again after
a crash or a kill finds the same run and Ray Train hands the latest checkpoint to every rank. Batches
and masks are drawn from generators seeded by (seed, rank, step), so a resumed run sees the same data
as an uninterrupted one, and the initial weights are drawn from `seed` alone, so every rank and every
run of the same params start from the same model. The learning rate follows
msgfm.training.schedule (linear warmup, cosine decay); msgfm.cluster.quiet keeps Ray's noise
of healthy runs off the output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msgfm.cluster.connect import RayClusterError, connect_ray, shutdown_ray
from msgfm.config import Params
from msgfm.datasets.pretrain import load_pretrain_chips, pretrain_loader
from msgfm.geo.io import atomic_path, atomic_write_json
from msgfm.models.msgfm import MSGFM, create_model_from_params
from msgfm.training.checkpoints import latest_checkpoint, restore_checkpoint, write_checkpoint
from msgfm.training.schedule import cosine_schedule

log = logging.getLogger(__name__)


class PretrainError(RuntimeError):
    """Pretraining cannot start or failed; the message says why and what to change."""


def run_name(params: Params, manifest_path: Path) -> str:
    """A name that changes whenever the run would be different, so a resume never mixes two runs."""
    spec = {
        "model": params.model.model_dump(mode="json"),
        "pretrain": params.pretrain.model_dump(
            mode="json",
            exclude={"workers", "threads_per_worker", "loader_workers", "log_every", "gpu", "preview_chips"},
        ),
        "seed": params.seed,
        "manifest": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"pretrain-{digest}"


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The torch generator (masks) of one step of one rank: a pure function of (seed, rank, step), so resume
    replays exactly; the step's batch is drawn with msgfm.datasets.pretrain.step_rng of the same triple."""
    seq = np.random.SeedSequence([seed, rank, step])
    return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))


def build_model(params: Params) -> MSGFM:
    """The model pretraining starts from, initialised from `seed` alone: the same weights on every rank (DDP
    would broadcast rank 0's anyway) and in every run of the same params. It has embeddings and decoders for
    `pretrain.sensors` only, so a single-sensor variant carries no untrained embeddings of other sensors."""
    torch.manual_seed(params.seed)
    return create_model_from_params(params.model, sensors=tuple(params.pretrain.sensors))


def _train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    grad_clip: float,
) -> dict[str, float]:
    """One optimizer step on `batch` (bfloat16 autocast on CUDA); the loss terms as floats."""
    model.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(batch, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in out.losses.items()}


@dataclass
class _Meter:
    """Throughput and the loss history of one rank: windows of `log_every` steps averaged into history."""

    steps: int
    start: int
    world: int
    history: list[dict[str, Any]]
    t_start: float = field(default_factory=time.perf_counter)
    seen: int = 0
    window: list[dict[str, float]] = field(default_factory=list)

    def add(self, batch: dict[str, Any], losses: dict[str, float]) -> None:
        """Count a step's chips and keep its losses for the window."""
        self.seen += sum(int(x.shape[0]) for x in batch["images"].values())
        self.window.append(losses)

    def samples_per_s(self, floor: float = 0.0) -> float:
        """Chips per second of all ranks since this run (or resume) started."""
        return self.seen * self.world / max(time.perf_counter() - self.t_start, floor)

    def close_window(self, done: int, lr: float, rank: int) -> None:
        """Average the window into history; rank 0 prints a progress line."""
        mean = {k: float(np.mean([w[k] for w in self.window if k in w])) for k in self.window[-1]}
        self.history.append({"step": done, "lr": lr, **mean})
        self.window = []
        if rank == 0:
            elapsed = time.perf_counter() - self.t_start
            eta = (self.steps - done) * elapsed / max(1, done - self.start)
            parts = " ".join(f"{k}={v:.3f}" for k, v in sorted(mean.items()) if k.startswith(("mim/", "cross/")))
            _progress(
                f"[pretrain] step {done}/{self.steps} loss={mean['total']:.4f} {parts} "
                f"{self.samples_per_s(1e-9):.1f} samples/s ETA {eta:.0f}s"
            )


def _report(core: MSGFM, optimizer: torch.optim.Optimizer, metrics: dict[str, Any], history: list, rank: int) -> None:
    """Report `metrics` to Ray Train with a checkpoint (model, optimizer, step and history) that rank 0 writes."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            write_checkpoint(Path(tmp), core, optimizer, {"step": metrics["step"], "history": history, **metrics})
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def train_loop(config: dict[str, Any]) -> None:
    """Per-worker training function run by Ray Train (also callable in-process with num_workers=0)."""
    import ray.train
    import ray.train.torch

    params = Params.model_validate(config["params"])
    cfg = params.pretrain
    torch.set_num_threads(cfg.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    chips = load_pretrain_chips(params, split="train", rank=rank, world=world)
    model = build_model(params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts a failed worker group within this run
    resume_dir = config.get("resume_from")  # set when the stage itself is run again after a crash or kill
    if checkpoint is not None or resume_dir:
        with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(resume_dir) as ckpt_dir:
            start, history = restore_checkpoint(model, optimizer, ckpt_dir)
        if rank == 0:
            _progress(f"[pretrain] resuming from step {start}/{cfg.steps}")
    model = ray.train.torch.prepare_model(
        model,
        parallel_strategy_kwargs={
            "find_unused_parameters": True,
            "gradient_as_bucket_view": True,
            "bucket_cap_mb": 100,
        },
    )
    core = model.module if hasattr(model, "module") else model
    scheduler = cosine_schedule(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, start=start)
    meter = _Meter(cfg.steps, start, world, history)
    feed = iter(pretrain_loader(chips, params, rank, start))
    for step in range(start, cfg.steps):
        torch_gen = _step_generator(params.seed, rank, step)
        batch = _to_device(next(feed), device)
        losses = _train_step(model, optimizer, batch, torch_gen, device, cfg.grad_clip)
        scheduler.step()
        meter.add(batch, losses)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            meter.close_window(done, scheduler.get_last_lr()[0], rank)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            metrics = {"step": done, "loss": losses["total"], "samples_per_s": meter.samples_per_s()}
            _report(core, optimizer, metrics, meter.history, rank)


def _root_cause(error: BaseException) -> str:
    """The last 'SomeError: message' line of a (Ray-wrapped) error, else its first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return causes[-1] if causes else (lines[0] if lines else type(error).__name__)


def _progress(line: str) -> None:
    """One progress line on stderr; not `print`, which Ray Train also copies into its logger (doubling it)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        "images": {s: x.to(device, non_blocking=True) for s, x in batch["images"].items()},
        "bands": batch["bands"],
        "partner": {s: x.to(device) for s, x in batch.get("partner", {}).items()},
    }


def _connect_ray(params: Params) -> bool:
    """Join the configured cluster or start a local instance for `pretrain.workers`; True when this call started Ray."""
    cfg = params.pretrain
    try:
        return connect_ray(params.ray, cfg.workers, cfg.threads_per_worker, "pretrain.workers")
    except RayClusterError as e:
        raise PretrainError(str(e)) from None


def _check_cluster(params: Params) -> bool:
    """Validate workers against the cluster's resources; return whether workers get a GPU each."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    cfg = params.pretrain
    use_gpu = cfg.gpu == "always" or (cfg.gpu == "auto" and gpus >= cfg.workers)
    if cfg.gpu == "always" and gpus < cfg.workers:
        raise PretrainError(f"pretrain.gpu=always needs {cfg.workers} GPUs; the Ray cluster has {gpus}")
    if not use_gpu and cfg.workers > cpus:
        raise PretrainError(f"pretrain.workers={cfg.workers} exceeds the {cpus} CPUs of the Ray cluster")
    return use_gpu


def run_pretrain(params: Params) -> dict[str, Any]:
    """Run the stage: train on Ray (resuming if a checkpoint of this run exists), then write the outputs."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    name = run_name(params, params.pretrain.manifest)
    # Ray workers run in their own working directory: hand them absolute paths.
    cfg = params.pretrain.model_copy(
        update={k: getattr(params.pretrain, k).resolve() for k in ("chips_dir", "manifest")}
    )
    gates = params.gates.model_copy(update={"dir": params.gates.dir.resolve()})
    params = params.model_copy(update={"pretrain": cfg, "gates": gates})
    load_pretrain_chips(params, split="train", rank=0, world=1)  # fail fast, before Ray starts, on bad inputs
    storage = cfg.checkpoint_dir.resolve()
    storage.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(storage / name)
    resume_from = str(resume) if resume is not None else None
    if resume_from:
        log.info("found checkpoint %s of run %s: resuming", resume, name)
    started = _connect_ray(params)
    try:
        use_gpu = _check_cluster(params)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"params": params.model_dump(mode="json"), "resume_from": resume_from},
            scaling_config=ScalingConfig(
                num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.threads_per_worker}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            ),
        )
        t0 = time.perf_counter()
        try:
            result = trainer.fit()
        except Exception as e:  # Ray wraps worker errors in its own; surface the worker's error line
            raise PretrainError(f"pretraining failed: {_root_cause(e)}") from e
        wall = time.perf_counter() - t0
    finally:
        if started:
            shutdown_ray()
    if result.checkpoint is None:
        raise PretrainError(f"pretraining run {name} ended without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        return write_outputs(params, Path(ckpt_dir), wall_s=wall)


def write_outputs(params: Params, ckpt_dir: Path, wall_s: float) -> dict[str, Any]:
    """Model, metrics, loss curve and reconstructions PNG from a final training checkpoint."""
    from safetensors.torch import load_file

    from msgfm.models.hub import save_pretrained
    from msgfm.training.pretrain_report import evaluate_reconstruction, plot_reconstructions, write_loss_curve

    cfg = params.pretrain
    state = json.loads((ckpt_dir / "state.json").read_text())
    model = build_model(params)  # the sensors pretrained on: a single-sensor variant has only its own
    model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")))
    model.eval()
    save_pretrained(model, cfg.out_dir, extra={"pretrain": {"steps": state["step"], "sensors": list(cfg.sensors)}})

    val = load_pretrain_chips(params, split="val", rank=0, world=1)
    train = load_pretrain_chips(params, split="train", rank=0, world=1)
    recon = evaluate_reconstruction(model, val, train, n_chips=cfg.val_chips, seed=params.seed)
    final = state["history"][-1]
    metrics = {
        "steps": state["step"],
        "workers": cfg.workers,
        "wall_time_s": round(wall_s, 2),
        "samples_per_s": round(state["samples_per_s"], 2),
        "train_loss": {k: round(v, 5) for k, v in final.items() if k not in ("step", "lr")},
        "val": recon,
    }
    atomic_write_json(cfg.metrics, metrics)
    write_loss_curve(state["history"], cfg.plots_dir)
    with atomic_path(cfg.plots_dir / "reconstructions.png", suffix=".png") as tmp:
        plot_reconstructions(model, val, n_chips=cfg.preview_chips, seed=params.seed, path=tmp)
    return metrics
