"""Fine-tuned task models: the encoder each variant starts from, and the checkpoint of a (task, variant).

`msgfm finetune` compares the encoders of `finetune.variants`: msGFM pretrained (`finetune.pretrained_model`),
the same network randomly initialised (`scratch`), and the pretraining variants (`pretrain_variants`: single
sensor, no cross-sensor term, dense), each fed only the inputs it has trained embeddings for.
Its best trial per (task, variant) is saved in `<finetune.out_dir>/<task>/<variant>/` as
`model.safetensors` and `best.json` (hyperparameters, metric, class codes, the encoder config and the
weights' SHA-256), which `msgfm evaluate` rebuilds the model from; each further fine-tuning seed
(`finetune.seeds`) of the best trial's hyperparameters in its `seed_<k>/` (`seed_dir`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from msgfm.architectures import MSGFMConfig
from msgfm.config import Params
from msgfm.geo.io import atomic_write_json, sha256_file
from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.extend import add_sensors, addable
from msgfm.models.heads import HeadSpec, TaskModel, build_task_model
from msgfm.models.hub import load_pretrained, save_weights
from msgfm.models.msgfm import create_model_from_params

NOT_APPLICABLE = "not applicable"
"""The key of a (task, variant) record whose encoder has no trained embedding for the inputs the task needs."""
BEST_FILE = "best.json"
WEIGHTS_FILE = "model.safetensors"


class TaskModelError(RuntimeError):
    """A variant's pretrained model is missing or unreadable; the message names the file."""


def study_storage(params: Params, task: str) -> Any:
    """Where the task's Optuna studies live: `finetune.study_storage` (an RDB URL a cluster shares) when set;
    else `optuna.journal` (a journal file, safe for several processes) when trials run in parallel, else
    `optuna.db` (SQLite) in `<finetune.out_dir>/<task>/`."""
    cfg = params.finetune
    if cfg.study_storage:
        return cfg.study_storage
    out = (cfg.out_dir / task).resolve()
    if cfg.trial_workers > 1:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        out.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    return f"sqlite:///{out / 'optuna.db'}"


def model_dir(params: Params, variant: str) -> Path | None:
    """The pretrained model a variant starts from (None: from scratch)."""
    if variant == "pretrained":
        return params.finetune.pretrained_model
    if variant == "scratch":
        return None
    if variant in params.pretrain_variants.define:
        return params.pretrain_variant(variant).pretrain.out_dir
    raise TaskModelError(
        f"unknown variant {variant!r}; variants are pretrained, scratch and {sorted(params.pretrain_variants.define)}"
    )


def variant_sensors(params: Params, variant: str) -> tuple[str, ...]:
    """The sensors a variant's encoder embeds: those it was pretrained on (scratch: the model's, untrained)."""
    if variant == "scratch":
        return tuple(params.model.to_model_config().sensors)
    chosen = params if variant == "pretrained" else params.pretrain_variant(variant)
    return tuple(chosen.pretrain.sensors)


def variant_missing(params: Params, variant: str) -> str | None:
    """Why a variant cannot run (its pretrained model is absent), or None."""
    path = model_dir(params, variant)
    if path is None or (path / "config.json").is_file():
        return None
    if variant == "pretrained":
        how = "run `dvc repro pretrain`"
    elif variant in params.pretrain_variants.run:
        how = f"run `dvc repro pretrain_variant@{variant}`"
    else:
        how = f"add {variant} to pretrain_variants.run, or run `msgfm pretrain --variant {variant}`"
    return f"{path}: no pretrained model ({how})"


def load_encoder(params: Params, variant: str, seed: int, inputs: Sequence[str] = ()) -> MSGFMEncoder:
    """The encoder a variant fine-tunes: loaded from its pretrained model, or freshly initialised with `seed`;
    grown by the added sensors among a task's `inputs` (WorldView PAN/MS: msgfm.models.extend)."""
    missing = variant_missing(params, variant)
    if missing:
        raise TaskModelError(missing)
    path = model_dir(params, variant)
    if path is None:
        torch.manual_seed(seed)
        encoder = create_model_from_params(params.model).encoder
    else:
        try:
            encoder = load_pretrained(path).encoder
        except (ValueError, FileNotFoundError) as e:
            raise TaskModelError(str(e)) from None
    return add_sensors(encoder, addable(inputs, encoder))


def rebuild_task_model(best: dict[str, Any], spec: HeadSpec) -> TaskModel:
    """An untrained TaskModel shaped like a saved fine-tuned checkpoint (best.json) of the task `spec`; its
    head takes only the inputs the encoder has (a single-sensor variant's checkpoint has its sensor alone)."""
    encoder = MSGFMEncoder(MSGFMConfig.from_dict(best["encoder_config"]))
    inputs = tuple(s for s in spec.inputs if s in encoder.sensors)
    if inputs != tuple(spec.inputs):
        spec = dataclasses.replace(spec, inputs=inputs)
    return build_task_model(spec, encoder, len(best["class_codes"]))


def seed_dir(out: Path, seed: int) -> Path:
    """Where a (task, variant)'s checkpoint of fine-tuning seed offset `seed` lives: 0 is the best trial itself."""
    return out if seed == 0 else out / f"seed_{seed}"


def save_best(out: Path, model: TaskModel, state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Write the checkpoint (safetensors) and then its record with the weights' SHA-256, both atomically."""
    model.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    record["sha256"] = save_weights(model, out / WEIGHTS_FILE)
    atomic_write_json(out / BEST_FILE, record)


def checkpoint_mismatch(out: Path) -> str | None:
    """Why `out`'s model.safetensors is not the checkpoint its best.json records (missing, or another trial's), or None.

    A kill between the two writes of `save_best` leaves a new trial's weights beside the previous best.json.
    """
    best, weights = out / BEST_FILE, out / WEIGHTS_FILE
    if not best.is_file() or not weights.is_file():
        return f"{out}: no fine-tuned checkpoint ({BEST_FILE} and {WEIGHTS_FILE})"
    if json.loads(best.read_text()).get("sha256") != sha256_file(weights):
        return f"{weights} does not match {best} (sha256)"
    return None
