"""`msgfm evaluate`: test metrics of the fine-tuned models, baselines, modality ablations, generalisation, report.

Reads the checkpoints `msgfm finetune` saved in `data/models/<task>/<variant>/` (one per fine-tuning seed,
`finetune.seeds`) and writes, each entry `{metric: value, "n": {chips, positions, blocks, unit, seeds},
"ci": {metric: [lo, hi]}}` (msgfm.evaluation.scoring): a value is the mean over the seeds, an interval the
seed x unit bootstrap's, a comparison paired over chips and seeds:

Entries of the tasks with classes (classification, segmentation) also list `absent_from_train`: the
split's classes that no training chip has, with their chips (pixels) and share; the model has no output for
them, so its metrics cannot score them, and the report names them.

- `evaluate.metrics` (data/metrics/evaluate.json): the msGFM pretrained model's test entries
  `{task: entry}`, the file flows/retrain.py's champion/challenger gate compares;
- `evaluate.baselines`: `{variant: {task: entry}}` for every variant of `finetune.variants` (pretrained,
  scratch, pretraining variants; one without a checkpoint gets `{"missing": reason}`, one whose encoder has no
  trained embedding for the task's inputs `{"not applicable": reason}`) and each task's trivial baselines
  (scoring.TRIVIAL);
- `evaluate.comparisons`: `{task: {"pretrained vs <other>" | "clean vs <condition>": gain, ci, verdict}}`,
  paired bootstrap differences on the primary metric (msgfm.evaluation.intervals), or the variant's
  `{"missing" | "not applicable": reason}`;
- `evaluate.ablations`: `{task: {condition: entry}}` for the pretrained model with each input
  sensor dropped (missing modality), corrupted by Gaussian noise, misregistered by `shift_px` pixels, and
  (optical sensors) covered by a synthetic cloud (msgfm.evaluation.ablations); `"clean"` is the
  unmodified test set;
- `evaluate.generalisation`: `{task: {"test"|"holdout_aoi"|"later": entry}}` for the pretrained
  model on the held-out biome's AOIs and on chips dated after `finetune.train_until`;
- plots in `evaluate.plots_dir` (PNG and DVC plot tables; msgfm.evaluation.plots) and the Markdown
  report `evaluate.report` (msgfm.evaluation.report), which states which of the paper's claims held on
  this run, from these numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from msgfm.datasets.task_chips import accepted_chips, build_task_data
from msgfm.datasets.tasks import TASKS, TaskData, get_task
from msgfm.evaluation.ablations import ablation_conditions
from msgfm.evaluation.plots import ablation_plot, image_examples, optuna_history, segmentation_plots
from msgfm.evaluation.report import render_report
from msgfm.evaluation.scoring import TRIVIAL, Evidence, Scored, evidence, score, score_outputs, trivial_outputs
from msgfm.geo.io import atomic_write_json, atomic_write_text
from msgfm.models.device import resolve_device
from msgfm.models.finetuned import (
    BEST_FILE,
    NOT_APPLICABLE,
    WEIGHTS_FILE,
    checkpoint_mismatch,
    rebuild_task_model,
    seed_dir,
    variant_sensors,
)
from msgfm.models.heads import TaskModel
from msgfm.models.hub import load_weights

if TYPE_CHECKING:
    from msgfm.config import Params

log = logging.getLogger(__name__)


class EvaluateError(RuntimeError):
    """Evaluation cannot run (no fine-tuned msGFM checkpoint); the message names the file."""


def load_finetuned(params: Params, task: str, variant: str, seed: int = 0) -> tuple[TaskModel, dict[str, Any]] | str:
    """The fine-tuned model of (task, variant) and fine-tuning seed offset `seed`, with its best.json record, or why
    it is missing."""
    folder = seed_dir(params.finetune.out_dir / task / variant, seed)
    if not (folder / BEST_FILE).is_file():
        return f"{folder / BEST_FILE}: no fine-tuned checkpoint (run `msgfm finetune --task {task}`)"
    mismatch = checkpoint_mismatch(folder)
    if mismatch:
        return f"{mismatch}: re-run `msgfm finetune --task {task}`"
    best = json.loads((folder / BEST_FILE).read_text())
    model = rebuild_task_model(best, get_task(best["task"]))
    load_weights(model, folder / WEIGHTS_FILE)
    return model.to(resolve_device(params.finetune.device)).eval(), best


def _load_seeds(params: Params, data: TaskData, variant: str) -> list[TaskModel] | str:
    """The variant's fine-tuned model of every seed in `finetune.seeds`, or why one is missing."""
    task, models = data.spec.name, []
    for seed in params.finetune.seeds:
        found = load_finetuned(params, task, variant, seed)
        if isinstance(found, str):
            return found
        model, best = found
        if tuple(best["class_codes"]) != data.class_codes:
            raise EvaluateError(
                f"{seed_dir(params.finetune.out_dir / task / variant, seed) / BEST_FILE}: classes "
                f"{best['class_codes']} differ from the data's {list(data.class_codes)}; re-run "
                f"`msgfm finetune --task {task}`"
            )
        models.append(model)
    return models


def _variant_models(params: Params, data: TaskData, variant: str) -> list[TaskModel] | dict[str, str]:
    """The variant's fine-tuned models (every seed), or `{"not applicable": why}` when its encoder has no trained
    embedding for the inputs the task needs, or `{"missing": why}` when a checkpoint is absent."""
    applicable = data.only(variant_sensors(params, variant))
    if isinstance(applicable, str):
        return {NOT_APPLICABLE: applicable}
    models = _load_seeds(params, data, variant)
    return {"missing": models} if isinstance(models, str) else models


@dataclass
class _Results:
    """Everything `msgfm evaluate` writes, filled task by task."""

    variants: list[str]  # "pretrained" first, then the others of finetune.variants
    evaluate: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)
    generalisation: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        trivial = dict.fromkeys(n for t in TRIVIAL.values() for n in t)
        self.baselines = {v: {} for v in (*self.variants, *trivial)}


def _absent(data: TaskData, split: str) -> dict[str, Any] | None:
    """The split's classes absent from training ({} when none), None for a task without classes."""
    return data.absent.get(split, {}) if data.spec.kind != "image" else None


def _score_pretrained(params: Params, data: TaskData, models: list[TaskModel], clean: list[Scored], ev: Evidence,
                      loaded: Any, results: _Results) -> None:  # fmt: skip
    """The pretrained model's test metrics, ablations (each paired with the clean set), generalisation sets, plots;
    every number over all fine-tuning seeds, the plots of the first seed's model."""
    task, test, plots = data.spec.name, data.splits["test"], params.evaluate.plots_dir
    results.evaluate[task] = record = ev.record(clean)
    ablations = results.ablations[task] = {}
    for name, condition in ablation_conditions(params, data, test).items():
        if isinstance(condition, str):
            ablations[name] = {"n/a": condition}
        elif condition is test:  # "clean": the test metrics just computed
            ablations[name] = record
        else:
            scored = [score(m, data, condition, 32) for m in models]
            ablations[name] = ev.record(scored)
            results.comparisons[task][f"clean vs {name}"] = ev.compare(clean, scored, task).record()
    results.generalisation[task] = {"test": record}
    for name in ("holdout_aoi", "later"):
        split = data.splits.get(name)
        results.generalisation[task][name] = (
            evidence(params, loaded[1], split, _absent(data, name)).record([score(m, data, split, 32) for m in models])
            if split is not None
            else {"n/a": data.notes.get(name, "no chips")}
        )
    if task == "segmentation":
        segmentation_plots(models[0], data, test, clean[0].metrics, plots, params.seed)
    elif data.spec.kind == "image":
        image_examples(models[0], data, test, params.evaluate.examples, plots / f"{task}_examples.png")


def _evaluate_task(params: Params, task: str, loaded: Any, results: _Results) -> None:
    """Every variant and trivial baseline of one task on its test split, paired against the pretrained model."""
    data = build_task_data(params, task, loaded=loaded)
    results.notes[task] = dict(data.notes)
    test = data.splits.get("test")
    if test is None:
        raise EvaluateError(f"{params.finetune.manifest}: no {task} test chips")
    ev = evidence(params, loaded[1], test, _absent(data, "test"))
    results.comparisons[task] = {}
    scored: dict[str, Scored | list[Scored]] = {}
    for name in TRIVIAL[task]:
        scored[name] = score_outputs(data, test, trivial_outputs(name, data, test))
        results.baselines[name][task] = ev.record(scored[name])
    for variant in results.variants:
        models = _variant_models(params, data, variant)
        if isinstance(models, dict):
            if variant == "pretrained" and "missing" in models:
                raise EvaluateError(models["missing"])
            results.baselines[variant][task] = models
            if variant != "pretrained":
                results.comparisons[task][f"pretrained vs {variant}"] = models
            continue
        vdata = data.only(models[0].encoder.sensors)  # only the inputs the variant's encoder was trained on
        if isinstance(vdata, str):
            results.baselines[variant][task] = {NOT_APPLICABLE: vdata}
            continue
        log.info("evaluate %s/%s on %d test chips (inputs %s, %d seeds)", task, variant, len(test),
                 list(vdata.spec.inputs), len(models))  # fmt: skip
        runs = [score(m, vdata, vdata.splits["test"], params.finetune.eval_batch_size) for m in models]
        scored[variant] = runs
        results.baselines[variant][task] = ev.record(runs)
        if variant == "pretrained":
            _score_pretrained(params, data, models, runs, ev, loaded, results)
    for other in [*results.variants[1:], *TRIVIAL[task]]:
        if other in scored and "pretrained" in scored:
            results.comparisons[task][f"pretrained vs {other}"] = ev.compare(
                scored["pretrained"], scored[other], task
            ).record()
    optuna_history(params, task, params.evaluate.plots_dir)


def run_evaluate(params: Params) -> dict[str, Any]:
    """Evaluate every task and variant; write metrics, plots and the report; return the pretrained metrics."""
    cfg = params.evaluate
    torch.set_num_threads(params.finetune.threads)
    cfg.plots_dir.mkdir(parents=True, exist_ok=True)
    loaded = accepted_chips(params)
    results = _Results(list(dict.fromkeys(["pretrained", *params.finetune.variants])))
    for task in TASKS:
        _evaluate_task(params, task, loaded, results)
    ablation_plot(results.ablations, cfg.plots_dir)
    atomic_write_json(cfg.metrics, results.evaluate)
    atomic_write_json(cfg.baselines, results.baselines)
    atomic_write_json(cfg.ablations, results.ablations)
    atomic_write_json(cfg.generalisation, results.generalisation)
    atomic_write_json(cfg.comparisons, results.comparisons)
    report = render_report(
        params, results.baselines, results.ablations, results.generalisation, results.notes, results.comparisons
    )
    atomic_write_text(cfg.report, report)
    return results.evaluate
