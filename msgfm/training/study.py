"""The Optuna study of one (task, variant): search space, fingerprint, storage, and the trials that count.

Studies live in the task's storage (msgfm.models.finetuned.study_storage: `optuna.db`, SQLite, or with
parallel trials `optuna.journal` or an RDB URL; `load_if_exists`), named by variant and a fingerprint of
what shapes a trial (params, the training and validation tensors, the pretrained weights), so a killed
run resumes where it stopped and changed params, chips or pretraining start a fresh study. Every epoch
reports the validation primary metric to a MedianPruner.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

from msgfm.datasets.tasks import TaskData, TaskSplit
from msgfm.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC
from msgfm.models.finetuned import model_dir, study_storage
from msgfm.models.hub import read_config
from msgfm.training.loop import Hyper

if TYPE_CHECKING:
    import optuna

    from msgfm.config import Params

log = logging.getLogger(__name__)


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
    """SHA-256 over the tensors a trial trains and validates on (new chips, or code that builds them otherwise);
    a streamed split contributes its own fingerprint (what it reads, not the pixels: reading would cost an epoch)."""
    digest = hashlib.sha256()
    for name in ("train", "val"):
        split = data.splits[name]
        if not isinstance(split, TaskSplit):
            digest.update(split.fingerprint().encode())
            continue
        for sensor in sorted(split.images):
            digest.update(split.images[sensor].numpy().tobytes())
            digest.update(split.present[sensor].numpy().tobytes())
        digest.update(split.target.numpy().tobytes())
    return digest.hexdigest()


def study_fingerprint(params: Params, data: TaskData, variant: str) -> str:
    """8 hex digits over everything that shapes a trial (params, data, the variant's pretrained weights), so
    that a rerun after a kill resumes the study and a rerun on changed inputs starts a fresh one."""
    exclude = {
        "trials",
        "seeds",
        "variants",
        "threads",
        "loader_workers",
        "eval_batch_size",
        "trial_workers",
        "study_storage",
    }
    cfg = params.finetune.model_dump(mode="json", exclude=exclude)
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
    """The task's study for `variant` in the task's storage (study_storage), created or resumed."""
    import optuna

    task = data.spec.name
    metric = PRIMARY_METRIC[task]
    out = params.finetune.out_dir / task
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"{variant}-{study_fingerprint(params, data, variant)}",
        storage=study_storage(params, task),
        load_if_exists=True,
        direction="maximize" if METRIC_DIRECTIONS[metric] == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=params.finetune.pruner_warmup_epochs),
    )


def fail_stale_trials(study: optuna.Study, label: str) -> None:
    """Mark failed the trials a killed run left RUNNING, so the study continues past them."""
    from optuna.trial import TrialState

    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("%s: trial %d was left running by a killed run; marking it failed", label, stale.number)
        study.tell(stale.number, state=TrialState.FAIL)


def finished_trials(study: optuna.Study) -> int:
    """Trials that count toward the budget: completed or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def pruned_trials(study: optuna.Study) -> int:
    """Trials the MedianPruner stopped early."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
