"""`msgfm finetune --task T`: Optuna-tuned fine-tuning of a task head on an msGFM encoder, and its baselines.

For each variant in `finetune.variants` (pretrained msGFM, the same network from scratch, and the
pretraining variants of `pretrain_variants`, each fed only the inputs it has trained embeddings for;
a task needing others is "not applicable" to it) an Optuna study (msgfm.training.study) searches
learning rate, weight decay, layer-wise lr decay, frozen vs full fine-tuning and batch size over
`finetune.trials` trials of `finetune.epochs` epochs (msgfm.training.loop) on the label budget
(`finetune.label_fraction` of the training chips, drawn once with the seed, the same for every
variant). A killed run resumes its study: trials left running are marked failed and the study
continues to `trials` finished trials. The best trial's weights (safetensors), hyperparameters and
metric go to `data/models/<task>/<variant>/`; when the saved checkpoint is not the study's best trial
(a kill between saving and finishing) or its weights are not the ones best.json records (a kill
between the two files), the best trial is retrained with its parameters and seed. Each further
fine-tuning seed offset k in `finetune.seeds` retrains the best trial's hyperparameters with the trial's
seed + k into `<variant>/seed_<k>/` (kept while the best trial stays the same), so evaluation can average
over seeds; offset 0 is the best trial itself.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from msgfm.cluster.connect import RayClusterError, connect_ray, shutdown_ray
from msgfm.config import Params
from msgfm.datasets.task_chips import build_task_data
from msgfm.datasets.tasks import TaskData, get_task
from msgfm.geo.io import atomic_write_json, remove_stale_temporaries
from msgfm.metrics import PRIMARY_METRIC
from msgfm.models.device import resolve_device
from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.finetuned import (
    BEST_FILE,
    NOT_APPLICABLE,
    WEIGHTS_FILE,
    checkpoint_mismatch,
    load_encoder,
    model_dir,
    save_best,
    seed_dir,
    variant_missing,
)
from msgfm.models.heads import TaskModel, build_task_model
from msgfm.training.loop import Hyper, train_model
from msgfm.training.study import fail_stale_trials, finished_trials, open_study, pruned_trials, suggest

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class FinetuneError(RuntimeError):
    """Fine-tuning cannot run (a model or input is missing); the message names the file."""


@dataclass
class _Tuning:
    """One variant's study on one task's data: runs trials and keeps the best one's checkpoint in `out`."""

    params: Params
    data: TaskData
    variant: str
    out: Path
    study: optuna.Study
    pretrained: MSGFMEncoder | None  # read once per variant and copied for every trial; None: scratch
    save: bool = True  # False in parallel workers: the driver saves the best trial once they are done

    def fit(self, hp: Hyper, seed: int, trial: optuna.Trial | None) -> tuple[TaskModel, float, dict, list]:
        """Train one model with `hp` and `seed`; a trial sees every epoch's value and may be pruned."""
        import optuna

        cfg = self.params.finetune
        if self.pretrained is not None:
            encoder = copy.deepcopy(self.pretrained)
        else:  # scratch draws its own initialisation from the seed
            encoder = load_encoder(self.params, self.variant, seed, self.data.spec.inputs)
        torch.manual_seed(seed)  # the head starts the same for every variant
        model = build_task_model(self.data.spec, encoder, self.data.num_classes).to(resolve_device(cfg.device))

        def report(epoch: int, value: float) -> None:
            if trial is not None:
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        value, state, history = train_model(
            model,
            self.data,
            hp,
            cfg.epochs,
            seed,
            cfg.min_steps_per_epoch,
            cfg.eval_batch_size,
            on_epoch=report,
            workers=cfg.loader_workers,
        )
        return model, value, state, history

    def record(
        self, trial_number: int, hp: Hyper, value: float, history: list, model: TaskModel, seed: int = 0
    ) -> dict[str, Any]:
        """What best.json keeps about a trial (trained with its seed plus the fine-tuning seed offset `seed`)."""
        return {
            "task": self.data.spec.name,
            "variant": self.variant,
            "trial": trial_number,
            "seed": seed,
            "metric": PRIMARY_METRIC[self.data.spec.name],
            "value": value,
            "params": asdict(hp),
            "history": history,
            "class_codes": list(self.data.class_codes),
            "train_samples": len(self.data.splits["train"]),
            "label_fraction": self.params.finetune.label_fraction,
            "encoder_config": model.encoder.config.to_dict(),
            "study": self.study.study_name,
        }

    def objective(self, trial: optuna.Trial) -> float:
        """Optuna's objective: train the trial's model and save it when it beats the study's best so far."""
        hp = suggest(trial, self.params)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        model, value, state, history = self.fit(hp, self.params.seed + trial.number, trial)
        try:
            best = self.study.best_value
        except ValueError:  # no completed trial yet
            best = None
        beats = best is None or (value > best if self.study.direction.name == "MAXIMIZE" else value < best)
        if beats and self.save:
            save_best(self.out, model, state, self.record(trial.number, hp, value, history, model))
        return value

    def saved_best(self) -> dict[str, Any]:
        """The best trial's record, retraining and saving it first when `out` does not hold its checkpoint."""
        label = f"{self.data.spec.name}/{self.variant}"
        try:
            best_trial = self.study.best_trial
        except ValueError:
            raise FinetuneError(f"{label}: no trial of study {self.study.study_name} completed") from None
        saved = None if checkpoint_mismatch(self.out) else json.loads((self.out / BEST_FILE).read_text())
        if saved is None or saved.get("trial") != best_trial.number or saved.get("study") != self.study.study_name:
            log.info("%s: retraining best trial %d to save its checkpoint", label, best_trial.number)
            hp = Hyper(**{k: best_trial.params[k] for k in Hyper.__dataclass_fields__})
            model, value, state, history = self.fit(hp, self.params.seed + best_trial.number, None)
            saved = self.record(best_trial.number, hp, value, history, model)
            save_best(self.out, model, state, saved)
        return saved

    def seeds(self, best: dict[str, Any]) -> dict[str, float]:
        """Validation value per fine-tuning seed (`finetune.seeds`) of the best trial's hyperparameters; a seed
        whose checkpoint is missing or belongs to another best trial is trained and saved first."""
        hp = Hyper(**best["params"])
        values: dict[str, float] = {}
        for offset in self.params.finetune.seeds:
            out = seed_dir(self.out, offset)
            saved = None if checkpoint_mismatch(out) else json.loads((out / BEST_FILE).read_text())
            current = saved is not None and all(saved.get(k) == best[k] for k in ("study", "trial"))
            if offset and not (current and saved.get("seed") == offset):
                log.info("%s/%s: fine-tuning seed %d of trial %d", self.data.spec.name, self.variant, offset,
                         best["trial"])  # fmt: skip
                model, value, state, history = self.fit(hp, self.params.seed + best["trial"] + offset, None)
                saved = self.record(best["trial"], hp, value, history, model, offset)
                save_best(out, model, state, saved)
            values[str(offset)] = float(saved["value"] if offset else best["value"])
        return values


def tune_variant(params: Params, data: TaskData, variant: str) -> dict[str, Any]:
    """Run (or resume) the variant's study to `finetune.trials` finished trials; save and return the best."""
    cfg = params.finetune
    task = data.spec.name
    if "val" not in data.splits:
        raise FinetuneError(f"{task}: no validation chips (see the pair stage's val_fraction)")
    out = cfg.out_dir / task / variant
    inputs = data.spec.inputs
    grows = model_dir(params, variant) is not None
    pretrained = load_encoder(params, variant, params.seed, inputs) if grows else None
    if pretrained is not None:  # feed the encoder only the inputs it has trained (or borrowed) embeddings for
        restricted = data.only(pretrained.sensors)
        if isinstance(restricted, str):
            log.info("%s/%s %s: %s", task, variant, NOT_APPLICABLE, restricted)
            return {NOT_APPLICABLE: restricted}
        data = restricted
    study = open_study(params, data, variant)
    # a kill inside save_best leaves a temporary file that this run may never write over
    remove_stale_temporaries(out / WEIGHTS_FILE, ".safetensors")
    remove_stale_temporaries(out / BEST_FILE)
    fail_stale_trials(study, f"{task}/{variant}")
    tuning = _Tuning(params, data, variant, out, study, pretrained)
    remaining = cfg.trials - finished_trials(study)
    start = time.perf_counter()
    if remaining > 0:
        log.info("%s/%s: %d trial(s) to run (study %s)", task, variant, remaining, study.study_name)
        if cfg.trial_workers > 1:
            _optimize_on_ray(params, data, variant, remaining)
        else:
            study.optimize(tuning.objective, n_trials=remaining, gc_after_trial=True)
    saved = tuning.saved_best()
    seeds = tuning.seeds(saved)
    return {
        "metric": PRIMARY_METRIC[task],
        "inputs": list(data.spec.inputs),
        "value": saved["value"],
        "seeds": seeds,
        "trial": saved["trial"],
        "params": saved["params"],
        "trials_finished": finished_trials(study),
        "trials_pruned": pruned_trials(study),
        "train_samples": saved["train_samples"],
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def _optimize_on_ray(params: Params, data: TaskData, variant: str, trials: int) -> None:
    """Run `trials` trials of the variant's study as `finetune.trial_workers` Ray tasks sharing its storage
    (the task data goes through Ray's object store, so workers need no chip store of their own)."""
    import ray

    cfg = params.finetune
    try:
        started = connect_ray(params.ray, cfg.trial_workers, cfg.threads, "finetune.trial_workers")
    except RayClusterError as e:
        raise FinetuneError(str(e)) from None
    try:
        shares = [trials // cfg.trial_workers + (i < trials % cfg.trial_workers) for i in range(cfg.trial_workers)]
        worker = ray.remote(num_cpus=cfg.threads)(_worker_trials)
        config, data_ref = params.model_dump(mode="json"), ray.put(data)
        ray.get([worker.remote(config, data_ref, variant, n) for n in shares if n])
    except ray.exceptions.RayTaskError as e:
        raise FinetuneError(f"{data.spec.name}/{variant}: a trial worker failed: {e.cause}") from None
    finally:
        if started:
            shutdown_ray()


def _worker_trials(config: dict[str, Any], data: TaskData, variant: str, trials: int) -> None:
    """One Ray task: `trials` trials of the shared study, saving nothing (the driver saves the best)."""
    params = Params.model_validate(config)
    torch.set_num_threads(params.finetune.threads)
    study = open_study(params, data, variant)
    out = params.finetune.out_dir / data.spec.name / variant
    inputs = data.spec.inputs
    grows = model_dir(params, variant) is not None
    pretrained = load_encoder(params, variant, params.seed, inputs) if grows else None
    tuning = _Tuning(params, data, variant, out, study, pretrained, save=False)
    study.optimize(tuning.objective, n_trials=trials, gc_after_trial=True)


def finetune_task_data(params: Params, task: str) -> TaskData:
    """The task's data as fine-tuning uses it: at most `finetune.max_val_chips` validation chips (seeded), in memory
    or, with `finetune.stream_chips`, read from the chip store batch by batch."""
    cfg = params.finetune
    get_task(task)
    data = build_task_data(params, task, stream=cfg.stream_chips)
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
