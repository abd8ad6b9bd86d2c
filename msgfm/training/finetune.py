"""`msgfm finetune --task T`: Optuna-tuned fine-tuning of a task head on an msGFM encoder, and its baselines.

For each variant in `finetune.variants` (pretrained msGFM, the same network from scratch, single-sensor
pretraining) an Optuna study searches learning rate, weight decay, layer-wise lr decay, frozen vs full
fine-tuning and batch size over `finetune.trials` trials of `finetune.epochs` epochs on the label
budget (`finetune.label_fraction` of the training chips, drawn once with the seed, the same for every
variant). Every epoch reports the validation primary metric (msgfm.evaluation.metrics.PRIMARY_METRIC) to a
MedianPruner. The studies live in `data/models/<task>/optuna.db` (SQLite, `load_if_exists`), named by
variant and a fingerprint of what shapes a trial (params, the training and validation tensors, the
pretrained weights), so a killed run resumes where it stopped (trials left running are marked failed
and the study continues to `trials` finished trials) and changed params, chips or pretraining start a
fresh study. The best trial's weights (safetensors), hyperparameters and metric
go to `data/models/<task>/<variant>/`; when the saved checkpoint is not the study's best trial (a
kill between saving and finishing) or its weights are not the ones best.json records (a kill between
the two files), the best trial is retrained with its parameters and seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from msgfm.architectures import MSGFMConfig
from msgfm.datasets.tasks import TaskData, TaskSpec, TaskSplit, build_task_data, get_task
from msgfm.evaluation.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC
from msgfm.geo.io import atomic_write_json, remove_stale_temporaries, sha256_file
from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.heads import ClassificationHead, ImageToImageHead, SegmentationHead, TaskModel

if TYPE_CHECKING:
    import optuna

    from msgfm.config import Params

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("pretrained", "scratch", "single_sensor")
"""Encoders compared: msGFM pretrained, the same network randomly initialised, single-sensor pretraining."""
BEST_FILE = "best.json"
WEIGHTS_FILE = "model.safetensors"


class FinetuneError(RuntimeError):
    """Fine-tuning cannot run (a model or input is missing); the message names the file."""


@dataclass(frozen=True)
class Hyper:
    """One trial's hyperparameters."""

    lr: float
    weight_decay: float
    layer_decay: float
    freeze: bool
    batch_size: int


# ----------------------------------------------------------------------------------------------
# models


def model_dir(params: Params, variant: str) -> Path | None:
    """The pretrained model a variant starts from (None: from scratch)."""
    if variant == "pretrained":
        return params.finetune.pretrained_model
    if variant == "single_sensor":
        return params.finetune.single_sensor_model
    if variant == "scratch":
        return None
    raise FinetuneError(f"unknown variant {variant!r}; variants are {list(VARIANTS)}")


def variant_missing(params: Params, variant: str) -> str | None:
    """Why a variant cannot run (its pretrained model is absent), or None."""
    path = model_dir(params, variant)
    if path is not None and not (path / "config.json").is_file():
        stage = "pretrain_single" if variant == "single_sensor" else "pretrain"
        return f"{path}: no pretrained model (run `dvc repro {stage}`)"
    return None


def load_encoder(params: Params, variant: str, seed: int) -> MSGFMEncoder:
    """The encoder a variant fine-tunes: loaded from its pretrained model, or freshly initialised with `seed`."""
    from msgfm.models import create_model_from_params
    from msgfm.models.hub import load_pretrained

    missing = variant_missing(params, variant)
    if missing:
        raise FinetuneError(missing)
    path = model_dir(params, variant)
    if path is None:
        torch.manual_seed(seed)
        return create_model_from_params(params.model).encoder
    try:
        return load_pretrained(path).encoder
    except (ValueError, FileNotFoundError) as e:
        raise FinetuneError(str(e)) from None


def build_task_model(spec: TaskSpec, encoder: MSGFMEncoder, num_classes: int) -> TaskModel:
    """The task head of `spec` on `encoder`."""
    dims = encoder.dims
    head: nn.Module
    if spec.kind == "multilabel":
        head = ClassificationHead(dims, num_classes)
    elif spec.kind == "segmentation":
        head = SegmentationHead(dims, num_classes, channels=32)
    else:
        head = ImageToImageHead(dims, spec.inputs, spec.out_sensor, spec.out_bands, channels=32, residual=spec.residual)
    return TaskModel(encoder, head)


def rebuild_task_model(best: dict[str, Any]) -> TaskModel:
    """An untrained TaskModel shaped like a saved fine-tuned checkpoint (best.json)."""
    encoder = MSGFMEncoder(MSGFMConfig.from_dict(best["encoder_config"]))
    return build_task_model(get_task(best["task"]), encoder, len(best["class_codes"]))


def layer_id(name: str, n_stages: int) -> int:
    """Depth of an encoder parameter for layer-wise lr decay: 0 embeddings, i+1 for stage i, n_stages for the norm."""
    if name.startswith(("patch_embed", "mask_token", "sensor_embed")):
        return 0
    if name.startswith(("stages.", "downsample.")):
        return int(name.split(".")[1]) + 1
    return n_stages


def param_groups(model: TaskModel, hp: Hyper) -> list[dict[str, Any]]:
    """AdamW groups: head at lr; encoder layer l at lr * layer_decay^(n_stages + 1 - l); no decay on 1-d params."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    n_stages = len(model.encoder.stages)
    named = [(f"head.{n}", p, 1.0) for n, p in model.head.named_parameters()]
    if not hp.freeze:
        named += [
            (n, p, hp.layer_decay ** (n_stages + 1 - layer_id(n, n_stages)))
            for n, p in model.encoder.named_parameters()
        ]
    for _, p, scale in named:
        groups.setdefault((scale, p.ndim > 1), []).append(p)
    return [
        {"params": ps, "lr": hp.lr * scale, "weight_decay": hp.weight_decay if decay else 0.0}
        for (scale, decay), ps in groups.items()
    ]


# ----------------------------------------------------------------------------------------------
# training and evaluation


def predict(model: TaskModel, split: TaskSplit, batch_size: int) -> torch.Tensor:
    """Outputs for every sample of `split` (eval mode, no gradients)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            images, present, _ = split.batch(index)
            outs.append(model(images, split.bands, present=present))
    return torch.cat(outs)


def evaluate_split(model: TaskModel, data: TaskData, split: TaskSplit, batch_size: int) -> dict[str, Any]:
    """Metrics of `model` on `split` (image tasks on reflectance 0..1)."""
    spec = data.spec
    metrics = spec.metrics(data.num_classes)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            images, present, target = split.batch(index)
            out = model(images, split.bands, present=present)
            if spec.kind == "image":
                metrics.update(spec.to_metric_space(out), spec.to_metric_space(target))
            else:
                metrics.update(out, target.long())
    return metrics.compute()


def encode_split(model: TaskModel, split: TaskSplit, batch_size: int) -> dict[str, list[torch.Tensor]]:
    """Encoder features (eval mode, no gradients) of every chip of `split`, per sensor and stage."""
    model.encoder.eval()
    parts: dict[str, list[list[torch.Tensor]]] = {sensor: [] for sensor in split.images}
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            index = slice(start, min(start + batch_size, len(split)))
            images = {sensor: x[index] for sensor, x in split.images.items()}
            for sensor, levels in model.encoder(images, split.bands).features.items():
                parts[sensor].append(levels)
    return {sensor: [torch.cat(level) for level in zip(*chunks, strict=True)] for sensor, chunks in parts.items()}


def train_model(
    model: TaskModel,
    data: TaskData,
    hp: Hyper,
    epochs: int,
    seed: int,
    min_steps_per_epoch: int = 1,
    eval_batch_size: int = 32,
    aux_weight: float = 0.01,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[float, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Fine-tune on data.splits["train"], validate each epoch; returns (best val metric, its weights, history).

    `on_epoch(epoch, value)` sees every epoch's validation primary metric (Optuna reports and prunes there).
    """
    spec = data.spec
    train, val = data.splits["train"], data.splits.get("val")
    if val is None:
        raise FinetuneError(f"{spec.name}: no validation chips (see the pair stage's val_fraction)")
    metric = PRIMARY_METRIC[spec.name]
    better = (lambda a, b: a > b) if METRIC_DIRECTIONS[metric] == "max" else (lambda a, b: a < b)
    for p in model.encoder.parameters():
        p.requires_grad_(not hp.freeze)
    optimizer = torch.optim.AdamW(param_groups(model, hp))
    generator = torch.Generator().manual_seed(seed)
    steps = max(min_steps_per_epoch, math.ceil(len(train) / hp.batch_size))
    total = epochs * steps
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    best_value, best_state, history = math.nan, {}, []
    order, cursor, step = torch.empty(0, dtype=torch.long), 0, 0
    cached = encode_split(model, train, eval_batch_size) if hp.freeze else None
    for epoch in range(epochs):
        model.train()
        if hp.freeze:
            model.encoder.eval()
        losses = []
        for _ in range(steps):
            if cursor + hp.batch_size > len(order):
                order, cursor = torch.cat([order[cursor:], torch.randperm(len(train), generator=generator)]), 0
            index = order[cursor : cursor + hp.batch_size]
            cursor += hp.batch_size
            factor = 0.5 * (1 + math.cos(math.pi * step / total))  # cosine decay to 0
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * factor
            images, present, target = train.batch(index)
            if cached is not None:  # frozen encoder: its features of the training chips never change
                features = {sensor: [level[index] for level in cached[sensor]] for sensor in images}
                out, aux = model.head(features, images=images, bands=train.bands, present=present), None
            else:
                out, aux = model(images, train.bands, present=present, return_aux=True)
            loss = spec.loss(out, target)
            if not hp.freeze:
                loss = loss + aux_weight * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        val_metrics = evaluate_split(model, data, val, eval_batch_size)
        value = float(val_metrics[metric])
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), metric: value})
        log.info("%s epoch %d: train loss %.4f, val %s %.4f", spec.name, epoch, np.mean(losses), metric, value)
        if math.isnan(best_value) or better(value, best_value):
            best_value = value
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, value)
    return best_value, best_state, history


# ----------------------------------------------------------------------------------------------
# Optuna


def suggest(trial: optuna.Trial, params: Params) -> Hyper:
    """The search space of `finetune`: lr, weight decay, layer decay (log/uniform), freeze, batch size."""
    cfg = params.finetune
    return Hyper(
        lr=trial.suggest_float("lr", *cfg.lr_range, log=True),
        weight_decay=trial.suggest_float("weight_decay", *cfg.weight_decay_range, log=True),
        layer_decay=trial.suggest_float("layer_decay", *cfg.layer_decay_range),
        freeze=bool(trial.suggest_categorical("freeze", list(cfg.freeze_choices))),
        batch_size=int(trial.suggest_categorical("batch_size", list(cfg.batch_sizes))),
    )


def data_digest(data: TaskData) -> str:
    """SHA-256 over the tensors a trial trains and validates on: new chips, or code that builds them otherwise."""
    digest = hashlib.sha256()
    for name in ("train", "val"):
        split = data.splits[name]
        for sensor in sorted(split.images):
            digest.update(split.images[sensor].numpy().tobytes())
            digest.update(split.present[sensor].numpy().tobytes())
        digest.update(split.target.numpy().tobytes())
    return digest.hexdigest()


def study_fingerprint(params: Params, data: TaskData, variant: str) -> str:
    """8 hex digits over everything that shapes a trial (params, data, the variant's pretrained weights), so
    that a rerun after a kill resumes the study and a rerun on changed inputs starts a fresh one."""
    cfg = params.finetune.model_dump(mode="json", exclude={"trials", "variants", "threads", "eval_batch_size"})
    from msgfm.models.hub import read_config

    path = model_dir(params, variant)
    weights = read_config(path).get("weights_sha256") if path is not None else None
    blob = json.dumps(
        {
            "task": data.spec.name,
            "seed": params.seed,
            "finetune": cfg,
            "model": params.model.model_dump(),
            "data": data_digest(data),
            "weights": weights,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def open_study(params: Params, data: TaskData, variant: str) -> optuna.Study:
    """The task's study for `variant` in data/models/<task>/optuna.db, created or resumed."""
    import optuna

    task = data.spec.name
    metric = PRIMARY_METRIC[task]
    out = params.finetune.out_dir / task
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"{variant}-{study_fingerprint(params, data, variant)}",
        storage=f"sqlite:///{(out / 'optuna.db').resolve()}",
        load_if_exists=True,
        direction="maximize" if METRIC_DIRECTIONS[metric] == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=params.finetune.pruner_warmup_epochs),
    )


def finished_trials(study: optuna.Study) -> int:
    """Trials that count toward the budget: completed or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _save_best(out: Path, model: TaskModel, state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Write the checkpoint (safetensors) and then its record with the weights' SHA-256, both atomically."""
    from msgfm.models.hub import save_weights

    model.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    record["sha256"] = save_weights(model, out / WEIGHTS_FILE)
    atomic_write_json(out / BEST_FILE, record)


def checkpoint_mismatch(out: Path) -> str | None:
    """Why `out`'s model.safetensors is not the checkpoint its best.json records (missing, or another trial's), or None.

    A kill between the two writes of `_save_best` leaves a new trial's weights beside the previous best.json.
    """
    best, weights = out / BEST_FILE, out / WEIGHTS_FILE
    if not best.is_file() or not weights.is_file():
        return f"{out}: no fine-tuned checkpoint ({BEST_FILE} and {WEIGHTS_FILE})"
    if json.loads(best.read_text()).get("sha256") != sha256_file(weights):
        return f"{weights} does not match {best} (sha256)"
    return None


def tune_variant(params: Params, data: TaskData, variant: str) -> dict[str, Any]:
    """Run (or resume) the variant's study to `finetune.trials` finished trials; save and return the best."""
    import optuna
    from optuna.trial import TrialState

    cfg = params.finetune
    task = data.spec.name
    metric = PRIMARY_METRIC[task]
    out = cfg.out_dir / task / variant
    study = open_study(params, data, variant)
    # a kill inside _save_best leaves a temporary file that this run may never write over
    remove_stale_temporaries(out / WEIGHTS_FILE, ".safetensors")
    remove_stale_temporaries(out / BEST_FILE)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("%s/%s: trial %d was left running by a killed run; marking it failed", task, variant, stale.number)
        study.tell(stale.number, state=TrialState.FAIL)

    # a pretrained encoder is read once per variant and copied for every trial (scratch draws its own init)
    pretrained = load_encoder(params, variant, params.seed) if model_dir(params, variant) is not None else None

    def fit(hp: Hyper, seed: int, trial: optuna.Trial | None) -> tuple[TaskModel, float, dict, list]:
        encoder = copy.deepcopy(pretrained) if pretrained is not None else load_encoder(params, variant, seed)
        torch.manual_seed(seed)  # the head starts the same for every variant
        model = build_task_model(data.spec, encoder, data.num_classes)

        def report(epoch: int, value: float) -> None:
            if trial is not None:
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        value, state, history = train_model(
            model, data, hp, cfg.epochs, seed, cfg.min_steps_per_epoch, cfg.eval_batch_size, on_epoch=report
        )
        return model, value, state, history

    def record(trial_number: int, hp: Hyper, value: float, history: list, model: TaskModel) -> dict[str, Any]:
        return {
            "task": task,
            "variant": variant,
            "trial": trial_number,
            "metric": metric,
            "value": value,
            "params": asdict(hp),
            "history": history,
            "class_codes": list(data.class_codes),
            "train_samples": len(data.splits["train"]),
            "label_fraction": cfg.label_fraction,
            "encoder_config": model.encoder.config.to_dict(),
            "study": study.study_name,
        }

    def objective(trial: optuna.Trial) -> float:
        hp = suggest(trial, params)
        model, value, state, history = fit(hp, params.seed + trial.number, trial)
        try:
            best = study.best_value
        except ValueError:  # no completed trial yet
            best = None
        beats = best is None or (value > best if study.direction.name == "MAXIMIZE" else value < best)
        if beats:
            _save_best(out, model, state, record(trial.number, hp, value, history, model))
        return value

    remaining = cfg.trials - finished_trials(study)
    start = time.perf_counter()
    if remaining > 0:
        log.info("%s/%s: %d trial(s) to run (study %s)", task, variant, remaining, study.study_name)
        study.optimize(objective, n_trials=remaining, gc_after_trial=True)
    try:
        best_trial = study.best_trial
    except ValueError:
        raise FinetuneError(f"{task}/{variant}: no trial of study {study.study_name} completed") from None
    saved = None if checkpoint_mismatch(out) else json.loads((out / BEST_FILE).read_text())
    if saved is None or saved.get("trial") != best_trial.number or saved.get("study") != study.study_name:
        log.info("%s/%s: retraining best trial %d to save its checkpoint", task, variant, best_trial.number)
        hp = Hyper(**{k: best_trial.params[k] for k in Hyper.__dataclass_fields__})
        model, value, state, history = fit(hp, params.seed + best_trial.number, None)
        saved = record(best_trial.number, hp, value, history, model)
        _save_best(out, model, state, saved)
    return {
        "metric": metric,
        "value": saved["value"],
        "trial": saved["trial"],
        "params": saved["params"],
        "trials_finished": finished_trials(study),
        "trials_pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        "train_samples": saved["train_samples"],
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def finetune_task_data(params: Params, task: str) -> TaskData:
    """The task's data as fine-tuning uses it: at most `finetune.max_val_chips` validation chips (seeded)."""
    cfg = params.finetune
    get_task(task)
    data = build_task_data(params, task)
    if "val" not in data.splits:
        raise FinetuneError(f"{cfg.manifest}: no {task} validation chips outside the held-out AOIs and dates")
    if len(data.splits["val"]) > cfg.max_val_chips:  # scored every epoch of every trial: keep it cheap
        picks = np.random.default_rng(params.seed).choice(len(data.splits["val"]), cfg.max_val_chips, replace=False)
        data.splits["val"] = data.splits["val"].subset(np.sort(picks))
    return data


def run_finetune(params: Params, task: str, variants: list[str] | None = None) -> dict[str, Any]:
    """Tune every variant on `task`; write data/metrics/finetune/<task>.json and return it."""
    cfg = params.finetune
    torch.set_num_threads(cfg.threads)
    data = finetune_task_data(params, task)
    summary: dict[str, Any] = {"task": task, "label_fraction": cfg.label_fraction, "notes": data.notes}
    for variant in variants or cfg.variants:
        missing = variant_missing(params, variant)
        if missing:
            if variant == "pretrained":
                raise FinetuneError(missing)
            log.warning("%s/%s skipped: %s", task, variant, missing)
            summary[variant] = {"missing": missing}
            continue
        summary[variant] = tune_variant(params, data, variant)
    atomic_write_json(cfg.metrics_dir / f"{task}.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------
# real benchmarks (msgfm/datasets/benchmarks)


def _benchmark_split(ds: Any, index: np.ndarray, chip_px: int) -> tuple[TaskSplit, TaskSpec]:
    """Samples `index` of a benchmark dataset as a TaskSplit at the model's chip size, and the task spec for it."""
    import dataclasses

    import torch.nn.functional as F

    from msgfm.sensors import get_sensor

    spec = get_task(ds.task)
    unsupported = [k for k, s in ds.inputs.items() if s is None]
    if unsupported:
        raise FinetuneError(
            f"benchmark {ds.name}: inputs {unsupported} are not sensors of the registry (msgfm.sensors); "
            "fine-tuning on it is not supported yet"
        )
    keep = {}  # input key -> (sensor, channel indices, band names) of the bands the registry knows
    for key, sensor in ds.inputs.items():
        known = get_sensor(sensor).band_names
        names = [b for b in ds.band_names[key] if b in known]
        if not names:
            raise FinetuneError(f"benchmark {ds.name}: input {key!r} has no band of sensor {sensor!r} ({known})")
        keep[key] = (sensor, [list(ds.band_names[key]).index(b) for b in names], tuple(names))

    def resize(x: torch.Tensor, mode: str) -> torch.Tensor:
        if x.shape[-1] == chip_px and x.shape[-2] == chip_px:
            return x
        kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x, size=(chip_px, chip_px), mode=mode, **kwargs)

    images: dict[str, list[torch.Tensor]] = {keep[k][0]: [] for k in keep}
    targets = []
    for i in index.tolist():
        sample = ds[int(i)]
        for key, (sensor, channels, names) in keep.items():
            pixels = sample[key][channels].numpy()
            images[sensor].append(torch.from_numpy(get_sensor(sensor).normalise(pixels, names)))
        target = sample[ds.target_key]
        if spec.kind == "image":
            names = ds.band_names[ds.target_key]
            order = [list(names).index(b) for b in spec.out_bands]
            target = torch.from_numpy(get_sensor(spec.out_sensor).normalise(target[order].numpy(), spec.out_bands))
        targets.append(target)
    stacked = {s: resize(torch.stack(v), "bilinear") for s, v in images.items()}
    target = torch.stack(targets)
    if spec.kind == "image":
        target = resize(target, "bilinear")
    elif spec.kind == "segmentation":
        target = resize(target[:, None].float(), "nearest")[:, 0].long()
    bands = {keep[k][0]: keep[k][2] for k in keep}
    present = {s: torch.ones(len(index), dtype=torch.bool) for s in stacked}
    spec = dataclasses.replace(spec, inputs=tuple(stacked))
    return TaskSplit(stacked, bands, present, target, [str(i) for i in index.tolist()]), spec


def benchmark_task_data(params: Params, name: str, root: Path) -> TaskData:
    """Train (label budget), val and test splits of a real benchmark, read fully into memory."""
    from msgfm.datasets.benchmarks import create_benchmark
    from msgfm.datasets.tasks import label_budget

    chip_px = params.model.chip_px
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
        splits[split], spec = _benchmark_split(ds, index, chip_px)
        num_classes = int(getattr(ds, "num_classes", 0) or len(getattr(ds, "class_names", ())) or 0)
    if spec.kind == "segmentation" and not num_classes:
        num_classes = int(splits["train"].target[splits["train"].target < 255].max()) + 1
    return TaskData(spec=spec, splits=splits, class_codes=tuple(range(num_classes)) if spec.kind != "image" else ())


def run_benchmark_finetune(params: Params, name: str, root: Path, variants: list[str] | None = None) -> dict[str, Any]:
    """Tune every variant on a real benchmark; outputs under <finetune.out_dir>/benchmarks/<name>/."""
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
    atomic_write_json(out / f"{data.spec.name}.json", summary)
    return summary
