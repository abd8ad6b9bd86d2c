"""`msgfm evaluate`: test metrics of the fine-tuned models, baselines, modality ablations, generalisation, report.

Reads the checkpoints `msgfm finetune` saved in `data/models/<task>/<variant>/` and writes:

- `evaluate.metrics` (data/metrics/evaluate.json): the msGFM pretrained model's scalar test metrics
  `{task: {metric: value}}`, the file flows/retrain.py's champion/challenger gate compares;
- `evaluate.baselines`: `{variant: {task: {metric: value}}}` for pretrained, scratch and single-sensor
  (a variant without a checkpoint gets `{"missing": reason}`);
- `evaluate.ablations`: `{task: {condition: {metric: value}}}` for the pretrained model with each input
  sensor dropped (missing modality), corrupted by Gaussian noise, misregistered by `shift_px` pixels, and
  (optical sensors) covered by a synthetic cloud; `"clean"` is the unmodified test set;
- `evaluate.generalisation`: `{task: {"test"|"holdout_aoi"|"later": {metric: value}}}` for the pretrained
  model on the held-out biome's AOIs and on chips dated after `finetune.train_until`;
- plots in `evaluate.plots_dir` (PNG and DVC plot tables) and the Markdown report `evaluate.report`,
  which states which of the paper's claims held on this run, from these numbers.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from msgfm.datasets.tasks import TASKS, TaskData, TaskSplit, accepted_chips, build_task_data, get_task  # noqa: E402
from msgfm.evaluation.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC, is_better  # noqa: E402
from msgfm.geo.io import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from msgfm.inference.predict import evaluate_split, predict  # noqa: E402
from msgfm.models.finetuned import (  # noqa: E402
    BEST_FILE,
    VARIANTS,
    WEIGHTS_FILE,
    checkpoint_mismatch,
    rebuild_task_model,
)
from msgfm.models.heads import TaskModel  # noqa: E402
from msgfm.sensors import get_sensor  # noqa: E402

if TYPE_CHECKING:
    from msgfm.config import Params

log = logging.getLogger(__name__)

CLOUD_VALUE = {"s2": 5000.0, "rgb": 235.0}
"""Physical value a synthetic cloud sets on an optical sensor's bands (S2: reflectance 0.5; RGB: near white)."""


TIE_TOLERANCE = 0.001
"""Relative difference below which two variants tie: a claim needs a difference larger than this."""


class EvaluateError(RuntimeError):
    """Evaluation cannot run (no fine-tuned msGFM checkpoint); the message names the file."""


def load_finetuned(params: Params, task: str, variant: str) -> tuple[TaskModel, dict[str, Any]] | str:
    """The fine-tuned model of (task, variant) and its best.json record, or why it is missing."""
    from msgfm.models.hub import load_weights

    folder = params.finetune.out_dir / task / variant
    if not (folder / BEST_FILE).is_file():
        return f"{folder / BEST_FILE}: no fine-tuned checkpoint (run `msgfm finetune --task {task}`)"
    mismatch = checkpoint_mismatch(folder)
    if mismatch:
        return f"{mismatch}: re-run `msgfm finetune --task {task}`"
    best = json.loads((folder / BEST_FILE).read_text())
    model = rebuild_task_model(best, get_task(best["task"]))
    load_weights(model, folder / WEIGHTS_FILE)
    return model.eval(), best


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics (named in METRIC_DIRECTIONS) of a metrics dict."""
    return {k: float(v) for k, v in metrics.items() if k in METRIC_DIRECTIONS}


# ----------------------------------------------------------------------------------------------
# corruptions


def drop_sensor(split: TaskSplit, sensor: str) -> TaskSplit:
    """The split with `sensor` absent from every sample (missing modality)."""
    out = split.subset(np.arange(len(split)))
    out.images[sensor] = torch.zeros_like(out.images[sensor])
    out.present[sensor] = torch.zeros_like(out.present[sensor])
    return out


def add_noise(split: TaskSplit, sensor: str, std: float, seed: int) -> TaskSplit:
    """The split with Gaussian noise of `std` (normalised units) added to `sensor`'s chips."""
    out = split.subset(np.arange(len(split)))
    generator = torch.Generator().manual_seed(seed)
    out.images[sensor] = out.images[sensor] + std * torch.randn(out.images[sensor].shape, generator=generator)
    return out


def misregister(split: TaskSplit, sensor: str, shift_px: int) -> TaskSplit:
    """The split with `sensor`'s chips shifted by `shift_px` pixels down and right (wrapping at the edges)."""
    out = split.subset(np.arange(len(split)))
    out.images[sensor] = torch.roll(out.images[sensor], shifts=(shift_px, shift_px), dims=(-2, -1))
    return out


def add_cloud(split: TaskSplit, sensor: str, cover: float, seed: int) -> TaskSplit:
    """The split with a square cloud covering `cover` of each `sensor` chip at a seeded random place."""
    out = split.subset(np.arange(len(split)))
    images = out.images[sensor].clone()
    size = images.shape[-1]
    side = max(1, int(round(math.sqrt(cover) * size)))
    bands = split.bands[sensor]
    value = np.full((len(bands), 1, 1), CLOUD_VALUE[sensor], dtype=np.float32)
    cloud = torch.from_numpy(get_sensor(sensor).normalise(value, bands))
    rng = np.random.default_rng(seed)
    for i in range(images.shape[0]):
        r, c = rng.integers(0, size - side + 1, size=2)
        images[i, :, r : r + side, c : c + side] = cloud
    out.images[sensor] = images
    return out


def input_as_prediction(data: TaskData, split: TaskSplit) -> dict[str, float]:
    """Image tasks: metrics of the residual input itself as the prediction (the cloudy chip, the HPF fusion)."""
    spec = data.spec
    metrics = spec.metrics(data.num_classes)
    order = [split.bands[spec.residual].index(b) for b in spec.out_bands]
    metrics.update(spec.to_metric_space(split.images[spec.residual][:, order]), spec.to_metric_space(split.target))
    return scalars(metrics.compute())


def ablation_conditions(params: Params, data: TaskData, split: TaskSplit) -> dict[str, TaskSplit | str]:
    """Test split variants per condition name ("clean", "drop_s1", "noise_s2", ...) or why one does not apply."""
    cfg = params.evaluate
    conditions: dict[str, TaskSplit | str] = {"clean": split}
    for sensor in data.spec.inputs:
        if len(data.spec.inputs) < 2:
            conditions[f"drop_{sensor}"] = "the task has one input sensor"
        elif sensor == data.spec.residual:
            conditions[f"drop_{sensor}"] = f"the output is a correction of the {sensor} input"
        else:
            conditions[f"drop_{sensor}"] = drop_sensor(split, sensor)
        conditions[f"noise_{sensor}"] = add_noise(split, sensor, cfg.noise_std, params.seed)
        conditions[f"shift_{sensor}"] = misregister(split, sensor, cfg.shift_px)
        if sensor in CLOUD_VALUE:
            conditions[f"cloud_{sensor}"] = add_cloud(split, sensor, cfg.cloud_cover, params.seed)
    return conditions


# ----------------------------------------------------------------------------------------------
# plots


def _save_png(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def class_names(codes: tuple[int, ...] | list[int]) -> list[str]:
    """WorldCover class names of the codes."""
    from msgfm.sim.world import CLASS_NAMES, CODES

    names = dict(zip(CODES.tolist(), CLASS_NAMES, strict=True))
    return [names.get(int(c), str(c)) for c in codes]


def segmentation_plots(model: TaskModel, data: TaskData, split: TaskSplit, metrics: dict, out: Path, seed: int) -> None:
    """Confusion matrix (PNG and DVC table of sampled pixels) and per-class IoU bars (PNG and table)."""
    names = class_names(data.class_codes)
    logits = predict(model, split, 32)
    pred = logits.argmax(1).flatten().numpy()
    true = split.target.flatten().numpy()
    valid = true < len(names)
    pred, true = pred[valid], true[valid]
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), v in np.ndenumerate(shares):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("segmentation: confusion (row-normalised)")
    _save_png(fig, out / "confusion.png")
    pick = np.random.default_rng(seed).choice(len(true), size=min(len(true), 5000), replace=False)
    frame = pd.DataFrame({"actual": [names[i] for i in true[pick]], "predicted": [names[i] for i in pred[pick]]})
    _write_csv(frame, out / "confusion.csv")
    iou = metrics.get("IoU_per_class", [])
    _write_csv(pd.DataFrame({"class": names, "IoU": iou}), out / "iou_per_class.csv")
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, iou, color="tab:green")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(f"segmentation: per-class IoU (mIoU {metrics.get('mIoU', float('nan')):.3f})")
    ax.tick_params(axis="x", rotation=45)
    _save_png(fig, out / "iou_per_class.png")


def _rgb(image: torch.Tensor, bands: tuple[str, ...]) -> np.ndarray:
    """A displayable true-colour (or first-three-band) image of reflectance 0..1, stretched."""
    order = [bands.index(b) for b in ("B04", "B03", "B02")] if {"B02", "B03", "B04"} <= set(bands) else [0, 1, 2]
    rgb = image[order].permute(1, 2, 0).numpy()
    return np.clip(rgb / max(float(np.percentile(rgb, 99)), 1e-6), 0, 1)


def image_examples(model: TaskModel, data: TaskData, split: TaskSplit, n: int, path: Path) -> None:
    """Input, prediction and target of `n` test chips (cloud removal, pan-sharpening) as one PNG."""
    spec = data.spec
    n = min(n, len(split))
    part = split.subset(np.arange(n))
    out = spec.to_metric_space(predict(model, part, n))
    target = spec.to_metric_space(part.target)
    source = part.images[spec.residual][:, [part.bands[spec.residual].index(b) for b in spec.out_bands]]
    source = spec.to_metric_space(source)
    fig, axes = plt.subplots(n, 3, figsize=(7, 2.4 * n), squeeze=False)
    for i in range(n):
        for ax, img, title in zip(
            axes[i], (source[i], out[i], target[i]), ("input", "prediction", "target"), strict=True
        ):
            ax.imshow(_rgb(img, spec.out_bands))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(spec.name.replace("_", " "))
    _save_png(fig, path)


def optuna_history(params: Params, task: str, out: Path) -> pd.DataFrame:
    """Every finished trial of the task's studies (variant, trial, value, state) as a table and a PNG."""
    import optuna

    storage = f"sqlite:///{(params.finetune.out_dir / task / 'optuna.db').resolve()}"
    rows = []
    if (params.finetune.out_dir / task / "optuna.db").is_file():
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for t in study.get_trials(deepcopy=False):
                value = t.value if t.value is not None else (max(t.intermediate_values.values(), default=None))
                rows.append({"study": summary.study_name, "trial": t.number, "value": value, "state": t.state.name})
    frame = pd.DataFrame(rows, columns=["study", "trial", "value", "state"])
    _write_csv(frame, out / f"optuna_{task}.csv")
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, group in frame.groupby("study"):
        ax.plot(group["trial"], group["value"], marker="o", label=name)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {PRIMARY_METRIC[task]}")
    ax.set_title(f"{task}: Optuna history")
    if not frame.empty:
        ax.legend(fontsize=7)
    _save_png(fig, out / f"optuna_{task}.png")
    return frame


def ablation_plot(ablations: dict[str, dict[str, Any]], out: Path) -> None:
    """Primary metric of each task under each condition, one panel per task."""
    fig, axes = plt.subplots(1, len(ablations), figsize=(4 * len(ablations), 3), squeeze=False)
    for ax, (task, conditions) in zip(axes[0], ablations.items(), strict=True):
        metric = PRIMARY_METRIC[task]
        names = [c for c, v in conditions.items() if metric in v]
        ax.bar(names, [conditions[c][metric] for c in names], color="tab:orange")
        ax.set_title(f"{task} ({metric})", fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    _save_png(fig, out / "ablations.png")


# ----------------------------------------------------------------------------------------------
# report


def claim(task: str, a: dict[str, Any], b: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether a beats b on the task's primary metric (None when either is missing), and the numbers."""
    metric = PRIMARY_METRIC[task]
    if metric not in a or metric not in b:
        return None, "missing"
    text = f"{a[metric]:.4f} vs {b[metric]:.4f} ({metric}, {METRIC_DIRECTIONS[metric]} is better)"
    if abs(a[metric] - b[metric]) <= TIE_TOLERANCE * abs(b[metric]):
        return False, f"{text}; a tie (within {TIE_TOLERANCE:.1%})"
    return is_better(metric, a[metric], b[metric]), text


def render_report(
    params: Params, baselines: dict, ablations: dict, generalisation: dict, notes: dict[str, dict[str, str]]
) -> str:
    """The Markdown report: tables of every number and, plainly, which claims held on this run."""
    fraction = params.finetune.label_fraction
    lines = [
        "# msGFM evaluation report",
        "",
        f"Label budget: {fraction:.0%} of the training chips; {params.finetune.trials} Optuna trials per task and "
        f"variant, {params.finetune.epochs} epochs each; held-out AOIs {params.finetune.holdout_aois}; "
        f"later dates after {params.finetune.train_until}.",
        "",
        "## Claims on this run",
        "",
    ]
    for title, other in (
        (f"Pretraining helps at {fraction:.0%} labels (pretrained beats scratch)", "scratch"),
        ("Cross-sensor pretraining beats single-sensor pretraining", "single_sensor"),
    ):
        verdicts = {t: claim(t, baselines["pretrained"].get(t, {}), baselines[other].get(t, {})) for t in TASKS}
        known = [v for v, _ in verdicts.values() if v is not None]
        if not known:
            summary = "NOT TESTED (baseline missing)"
        else:
            summary = (
                f"HELD on {sum(known)} of {len(known)} tasks"
                if any(known)
                else f"DID NOT HOLD on any of {len(known)} tasks"
            )
        lines.append(f"- **{title}: {summary}.**")
        for task, (held, text) in verdicts.items():
            word = {True: "held", False: "did not hold", None: "not tested"}[held]
            lines.append(f"  - {task}: {word}: {text}")
    lines += [
        "",
        "## Test metrics per variant",
        "",
        "`input`: the image tasks' input taken as the prediction (the cloudy chip; the HPF-fused MS), no network.",
        "",
    ]
    metrics_order = sorted({m for v in baselines.values() for t in v.values() for m in t if m in METRIC_DIRECTIONS})
    lines.append("| variant | task | " + " | ".join(metrics_order) + " |")
    lines.append("|---|---|" + "---|" * len(metrics_order))
    for variant, tasks in baselines.items():
        for task in TASKS:
            row = tasks.get(task, {})
            if "missing" in row and variant == "input":
                continue
            if "missing" in row:
                lines.append(f"| {variant} | {task} | missing: {row['missing']} |")
                continue
            cells = [f"{row[m]:.4f}" if m in row else "" for m in metrics_order]
            lines.append(f"| {variant} | {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Modality ablations (pretrained msGFM, primary metric)", ""]
    lines.append("| task | condition | value | change vs clean |")
    lines.append("|---|---|---|---|")
    for task, conditions in ablations.items():
        metric = PRIMARY_METRIC[task]
        clean = conditions.get("clean", {}).get(metric)
        for name, values in conditions.items():
            if "n/a" in values:
                lines.append(f"| {task} | {name} | n/a: {values['n/a']} | |")
            else:
                delta = values[metric] - clean if clean is not None else float("nan")
                lines.append(f"| {task} | {name} | {values[metric]:.4f} ({metric}) | {delta:+.4f} |")
    lines += ["", "## Generalisation (pretrained msGFM, primary metric)", ""]
    lines.append("| task | test | held-out AOIs | later dates |")
    lines.append("|---|---|---|---|")
    for task, sets in generalisation.items():
        metric = PRIMARY_METRIC[task]
        cells = [
            f"{sets[s][metric]:.4f}" if metric in sets.get(s, {}) else f"n/a ({sets.get(s, {}).get('n/a', 'missing')})"
            for s in ("test", "holdout_aoi", "later")
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    flat = [f"- {task}: {name}: {text}" for task, items in notes.items() for name, text in items.items()]
    if flat:
        lines += ["", "## Notes", "", *flat]
    lines += [
        "",
        "Figures: confusion.png, iou_per_class.png, cloud_removal_examples.png, pansharpening_examples.png, "
        "ablations.png, optuna_<task>.png in the plots folder.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the stage


def run_evaluate(params: Params) -> dict[str, Any]:
    """Evaluate every task and variant; write metrics, plots and the report; return the pretrained metrics."""
    cfg = params.evaluate
    torch.set_num_threads(params.finetune.threads)
    plots = cfg.plots_dir
    plots.mkdir(parents=True, exist_ok=True)
    loaded = accepted_chips(params)
    evaluate: dict[str, dict[str, float]] = {}
    baselines: dict[str, dict[str, Any]] = {v: {} for v in (*VARIANTS, "input")}
    ablations: dict[str, dict[str, Any]] = {}
    generalisation: dict[str, dict[str, Any]] = {}
    notes: dict[str, dict[str, str]] = {}
    for task in TASKS:
        data = build_task_data(params, task, loaded=loaded)
        notes[task] = dict(data.notes)
        test = data.splits.get("test")
        if test is None:
            raise EvaluateError(f"{params.finetune.manifest}: no {task} test chips")
        baselines["input"][task] = (
            input_as_prediction(data, test) if data.spec.kind == "image" else {"missing": "not an image task"}
        )
        for variant in VARIANTS:
            found = load_finetuned(params, task, variant)
            if isinstance(found, str):
                if variant == "pretrained":
                    raise EvaluateError(found)
                baselines[variant][task] = {"missing": found}
                continue
            model, best = found
            if tuple(best["class_codes"]) != data.class_codes:
                raise EvaluateError(
                    f"{params.finetune.out_dir / task / variant / BEST_FILE}: classes {best['class_codes']} differ "
                    f"from the data's {list(data.class_codes)}; re-run `msgfm finetune --task {task}`"
                )
            log.info("evaluate %s/%s on %d test chips", task, variant, len(test))
            metrics = evaluate_split(model, data, test, params.finetune.eval_batch_size)
            baselines[variant][task] = scalars(metrics)
            if variant != "pretrained":
                continue
            evaluate[task] = scalars(metrics)
            ablations[task] = {}
            for name, condition in ablation_conditions(params, data, test).items():
                if isinstance(condition, str):
                    ablations[task][name] = {"n/a": condition}
                elif condition is test:  # "clean": the test metrics just computed
                    ablations[task][name] = scalars(metrics)
                else:
                    ablations[task][name] = scalars(evaluate_split(model, data, condition, 32))
            generalisation[task] = {"test": scalars(metrics)}
            for name in ("holdout_aoi", "later"):
                split = data.splits.get(name)
                generalisation[task][name] = (
                    scalars(evaluate_split(model, data, split, 32))
                    if split is not None
                    else {"n/a": data.notes.get(name, "no chips")}
                )
            if task == "segmentation":
                segmentation_plots(model, data, test, metrics, plots, params.seed)
            elif data.spec.kind == "image":
                image_examples(model, data, test, cfg.examples, plots / f"{task}_examples.png")
        optuna_history(params, task, plots)
    ablation_plot(ablations, plots)
    atomic_write_json(cfg.metrics, evaluate)
    atomic_write_json(cfg.baselines, baselines)
    atomic_write_json(cfg.ablations, ablations)
    atomic_write_json(cfg.generalisation, generalisation)
    atomic_write_text(cfg.report, render_report(params, baselines, ablations, generalisation, notes))
    return evaluate
