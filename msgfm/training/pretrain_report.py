"""What pretraining shows a person: validation reconstruction loss against baseline predictors, the loss
curve in dvclive's format (a DVC plot), and a PNG of reconstructions for every sensor and cross direction.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from msgfm.datasets.pretrain import PretrainChips  # noqa: E402
from msgfm.models.msgfm import MSGFM, masked_l1  # noqa: E402
from msgfm.sensors import get_sensor  # noqa: E402
from msgfm.training.mim_baselines import chip_mean_fill, global_mean_fill, idw_fill  # noqa: E402


def _fixed_forward(model: MSGFM, batch: dict[str, Any], seed: int):
    """Forward pass with seeded masks and every paired chip also reconstructing its partner."""
    gen = torch.Generator().manual_seed(seed)
    masks = model.generate_masks(batch["images"], gen)
    cross = {s: idx >= 0 for s, idx in batch.get("partner", {}).items()}
    with torch.no_grad():
        return model(batch, masks=masks, cross=cross)


def _ratio(model: float, baseline: float) -> float:
    return round(model / max(baseline, 1e-9), 4)


def _term_baselines(
    target: torch.Tensor, context: torch.Tensor, scored: torch.Tensor, means: torch.Tensor, idw: bool
) -> dict[str, float]:
    """Masked L1 on the `scored` pixels of each baseline predictor of `target` (msgfm.training.mim_baselines),
    given the target pixels outside `context` (True = hidden), the ones the chip-level baselines may use."""
    found = {
        "mean_baseline": masked_l1(global_mean_fill(means, target), target, scored),
        "chip_mean_baseline": masked_l1(chip_mean_fill(target, context), target, scored),
    }
    if idw:  # interpolating the target's visible pixels: for a cross term only when the model sees them (joint)
        found["idw_baseline"] = masked_l1(idw_fill(target, context), target, scored)
    return {k: float(v) for k, v in found.items()}


RATIO_KEYS = {"mean_baseline": "ratio", "chip_mean_baseline": "ratio_chip_mean", "idw_baseline": "ratio_idw"}
"""Per-term ratio key of each baseline: the model's masked L1 divided by the baseline's (below 1 beats it)."""


def evaluate_reconstruction(
    model: MSGFM, val: PretrainChips, train: PretrainChips, n_chips: int, seed: int
) -> dict[str, Any]:
    """Masked L1 on validation chips per term (mim/<s>, cross/<a>-><b>) next to the baselines' and their ratios.

    Baselines: the train set's per-band mean, the chip's visible per-band mean and (MIM terms) an
    inverse-distance interpolation of the chip's visible pixels; the summary averages over terms.
    """
    batch = val.fixed_batch(n_chips)
    out = _fixed_forward(model.eval(), batch, seed)
    means = train.band_means()
    terms: dict[str, dict[str, float]] = {}
    for key, value in out.losses.items():
        if not key.startswith(("mim/", "cross/")):
            continue
        if key.startswith("mim/"):
            sensor = key.split("/")[1]
            target, context = batch["images"][sensor], out.mask[sensor]
            scored = context
        else:
            src, sensor = key.split("/")[1].split("->")
            rows = out.cross_index[f"{src}->{sensor}"]
            target = batch["images"][sensor].index_select(0, batch["partner"][src].index_select(0, rows))
            context, scored = out.cross_context[f"{src}->{sensor}"], out.cross_mask[f"{src}->{sensor}"]
        idw = key.startswith("mim/") or model.config.cross_design == "joint"
        baselines = _term_baselines(target, context, scored, means[sensor], idw=idw)
        terms[key] = {"model": round(float(value), 5)}
        for name, loss in baselines.items():
            terms[key][name] = round(loss, 5)
            terms[key][RATIO_KEYS[name]] = _ratio(float(value), loss)
    model_mean = float(np.mean([t["model"] for t in terms.values()]))
    base_mean = float(np.mean([t["mean_baseline"] for t in terms.values()]))
    chip_mean = float(np.mean([t["chip_mean_baseline"] for t in terms.values()]))
    return {
        "terms": terms,
        "loss": round(model_mean, 5),
        "mean_baseline": round(base_mean, 5),
        "ratio_to_baseline": _ratio(model_mean, base_mean),
        "chip_mean_baseline": round(chip_mean, 5),
        "ratio_to_chip_mean": _ratio(model_mean, chip_mean),
        "worst_ratio_chip_mean": max(t["ratio_chip_mean"] for t in terms.values()),
    }


def write_loss_curve(history: list[dict[str, float]], plots_dir: Path) -> None:
    """Write the training loss history as dvclive step metrics (plots/metrics/*.tsv), replacing old ones."""
    from dvclive import Live

    live_dir = plots_dir / "live"
    shutil.rmtree(live_dir, ignore_errors=True)
    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False) as live:
        for entry in history:
            live.step = int(entry["step"])
            for key, value in entry.items():
                if key != "step":
                    live.log_metric(f"train/{key}", float(value))
            live.next_step()


def _display(
    sensor: str, bands: tuple[str, ...], chip: torch.Tensor, like: torch.Tensor | None = None
) -> tuple[np.ndarray, str | None]:
    """A normalised (C, H, W) chip as an image a person can read, and its colour map.

    DSM heights are stretched between the 2nd and 98th percentile of `like` (the target), so a
    reconstruction is shown on the same scale as what it should match.
    """
    s = get_sensor(sensor)
    x = s.denormalise(chip.numpy(), bands)
    if sensor == "s2":
        rgb = np.stack([x[bands.index(b)] for b in ("B04", "B03", "B02")], -1)
        return np.clip(rgb / 3000.0, 0, 1), None
    if sensor == "rgb":
        return np.clip(np.moveaxis(x, 0, -1) / 255.0, 0, 1), None
    if sensor == "s1":
        return np.clip((x[0] + 25.0) / 25.0, 0, 1), "gray"
    ref = x if like is None else s.denormalise(like.numpy(), bands)
    lo, hi = np.percentile(ref[0], [2, 98])
    return np.clip((x[0] - lo) / max(hi - lo, 1e-6), 0, 1), "terrain"


def plot_reconstructions(model: MSGFM, val: PretrainChips, n_chips: int, seed: int, path: Path) -> None:
    """Grid of input (masked), mask, reconstruction and target per sensor, and input/output per cross direction."""
    batch = val.fixed_batch(n_chips)
    out = _fixed_forward(model.eval(), batch, seed)
    rows: list[tuple[str, list[tuple[np.ndarray, str | None]]]] = []
    for sensor, images in batch["images"].items():
        bands = tuple(batch["bands"][sensor])
        for i in range(min(n_chips, images.shape[0])):
            mask = out.mask[sensor][i].numpy()
            target, cmap = _display(sensor, bands, images[i])
            shown = target.copy()
            shown[mask] = 0.5
            recon, _ = _display(sensor, bands, out.pred[sensor][i], like=images[i])
            rows.append(
                (f"{sensor} #{i}", [(shown, cmap), (mask.astype(float), "gray"), (recon, cmap), (target, cmap)])
            )
    for key, pred in out.cross_pred.items():
        src, dst = key.split("->")
        rows_idx = out.cross_index[key]
        for j in range(min(n_chips, pred.shape[0])):
            i = int(rows_idx[j])
            src_img, src_cmap = _display(src, tuple(batch["bands"][src]), batch["images"][src][i])
            src_img = src_img.copy()
            src_img[out.mask[src][i].numpy()] = 0.5
            mask = out.cross_mask[key][j].numpy()  # the pixels the term scores
            partner = int(batch["partner"][src][i])
            target, cmap = _display(dst, tuple(batch["bands"][dst]), batch["images"][dst][partner])
            recon, _ = _display(dst, tuple(batch["bands"][dst]), pred[j], like=batch["images"][dst][partner])
            rows.append(
                (f"{key} #{j}", [(src_img, src_cmap), (mask.astype(float), "gray"), (recon, cmap), (target, cmap)])
            )
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2 * len(rows)), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c, (img, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["input (masked)", "mask", "reconstruction", "target"][c], fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=8)
    seen = "a's and b's visible cells" if model.config.cross_design == "joint" else "a's masked input"
    fig.suptitle(
        f"msGFM pretraining: validation reconstructions\n(a->b rows: b's pixels from {seen}; mask: pixels scored)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
