"""The evaluation figures: PNGs (matplotlib, Agg) and the tables DVC plots read (CSV), written atomically.

Confusion matrix and per-class IoU of segmentation, input/prediction/target examples of the image
tasks, the Optuna history of every study of a task, and the primary metric under every ablation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from msgfm.datasets.tasks import TaskData, TaskSplit  # noqa: E402
from msgfm.geo.io import atomic_path, atomic_write_text  # noqa: E402
from msgfm.inference.predict import predict  # noqa: E402
from msgfm.landcover import SHORT_NAMES  # noqa: E402
from msgfm.metrics import PRIMARY_METRIC  # noqa: E402
from msgfm.models.finetuned import study_storage  # noqa: E402
from msgfm.models.heads import TaskModel  # noqa: E402

if TYPE_CHECKING:
    from msgfm.config import Params


def _save_png(fig: plt.Figure, path: Path) -> None:
    """Write the figure as a PNG, atomically, and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a DVC plot table (CSV without the index), atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def class_names(codes: tuple[int, ...] | list[int]) -> list[str]:
    """WorldCover class names of the codes (msgfm.landcover's short names)."""
    return [SHORT_NAMES.get(int(c), str(c)) for c in codes]


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

    storage = study_storage(params, task)
    rows = []
    sqlite = isinstance(storage, str) and storage.startswith("sqlite:")
    if not sqlite or (params.finetune.out_dir / task / "optuna.db").is_file():  # never create an empty db
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
