"""The Markdown report of `msgfm evaluate`: which of the paper's claims held on this run, and every number.

A claim holds on a task when the pretrained msGFM beats the other variant on the task's primary metric
by more than TIE_TOLERANCE (relative); the report then lists the test metrics of every variant, the
modality ablations and the generalisation sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgfm.datasets.tasks import TASKS
from msgfm.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC, is_better

if TYPE_CHECKING:
    from msgfm.config import Params

TIE_TOLERANCE = 0.001
"""Relative difference below which two variants tie: a claim needs a difference larger than this."""


def claim(task: str, a: dict[str, Any], b: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether a beats b on the task's primary metric (None when either is missing), and the numbers."""
    metric = PRIMARY_METRIC[task]
    if metric not in a or metric not in b:
        return None, "missing"
    text = f"{a[metric]:.4f} vs {b[metric]:.4f} ({metric}, {METRIC_DIRECTIONS[metric]} is better)"
    if abs(a[metric] - b[metric]) <= TIE_TOLERANCE * abs(b[metric]):
        return False, f"{text}; a tie (within {TIE_TOLERANCE:.1%})"
    return is_better(metric, a[metric], b[metric]), text


def _claims(fraction: float, baselines: dict) -> list[str]:
    """One verdict line per claim, and under it one line per task with the numbers."""
    lines = []
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
    return lines


def _variant_table(baselines: dict) -> list[str]:
    """Test metrics of every variant and task, one column per scalar metric."""
    metrics_order = sorted({m for v in baselines.values() for t in v.values() for m in t if m in METRIC_DIRECTIONS})
    lines = ["| variant | task | " + " | ".join(metrics_order) + " |", "|---|---|" + "---|" * len(metrics_order)]
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
    return lines


def _ablation_table(ablations: dict) -> list[str]:
    """The primary metric of every task under every condition, and its change against the clean test set."""
    lines = ["| task | condition | value | change vs clean |", "|---|---|---|---|"]
    for task, conditions in ablations.items():
        metric = PRIMARY_METRIC[task]
        clean = conditions.get("clean", {}).get(metric)
        for name, values in conditions.items():
            if "n/a" in values:
                lines.append(f"| {task} | {name} | n/a: {values['n/a']} | |")
            else:
                delta = values[metric] - clean if clean is not None else float("nan")
                lines.append(f"| {task} | {name} | {values[metric]:.4f} ({metric}) | {delta:+.4f} |")
    return lines


def _generalisation_table(generalisation: dict) -> list[str]:
    """The primary metric of every task on the test set, the held-out AOIs and the later dates."""
    lines = ["| task | test | held-out AOIs | later dates |", "|---|---|---|---|"]
    for task, sets in generalisation.items():
        metric = PRIMARY_METRIC[task]
        cells = [
            f"{sets[s][metric]:.4f}" if metric in sets.get(s, {}) else f"n/a ({sets.get(s, {}).get('n/a', 'missing')})"
            for s in ("test", "holdout_aoi", "later")
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def render_report(
    params: Params, baselines: dict, ablations: dict, generalisation: dict, notes: dict[str, dict[str, str]]
) -> str:
    """The Markdown report: tables of every number and, plainly, which claims held on this run."""
    cfg = params.finetune
    lines = [
        "# msGFM evaluation report",
        "",
        f"Label budget: {cfg.label_fraction:.0%} of the training chips; {cfg.trials} Optuna trials per task and "
        f"variant, {cfg.epochs} epochs each; held-out AOIs {cfg.holdout_aois}; "
        f"later dates after {cfg.train_until}.",
        "",
        "## Claims on this run",
        "",
        *_claims(cfg.label_fraction, baselines),
        "",
        "## Test metrics per variant",
        "",
        "`input`: the image tasks' input taken as the prediction (the cloudy chip; the HPF-fused MS), no network.",
        "",
        *_variant_table(baselines),
        "",
        "## Modality ablations (pretrained msGFM, primary metric)",
        "",
        *_ablation_table(ablations),
        "",
        "## Generalisation (pretrained msGFM, primary metric)",
        "",
        *_generalisation_table(generalisation),
    ]
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
