"""The Markdown report of `msgfm evaluate`: which of the paper's claims held on this run, and every number.

Every claim is a paired difference on the task's primary metric with its bootstrap interval over the
test set's independent units and its verdict (msgfm.evaluation.intervals: "held", "no difference", "did
not hold" or "inconclusive", with the reason, against the metric's minimum meaningful difference).
Every number carries its interval and n (chips / positions / blocks). A task whose pretrained model is
not shown to beat its trivial baselines (msgfm.evaluation.scoring.TRIVIAL) is named at the top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgfm.datasets.tasks import TASKS
from msgfm.evaluation.scoring import ABSENT_KEY, TRIVIAL, best_trivial_gap
from msgfm.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC
from msgfm.models.finetuned import NOT_APPLICABLE

if TYPE_CHECKING:
    from msgfm.config import Params


def _ci(row: dict[str, Any], metric: str) -> str:
    """`value [lo, hi]` of a metric of a record (the value alone when it has no interval)."""
    value = row[metric]
    lo, hi = (row.get("ci", {}).get(metric) or [None, None])[:2]
    return f"{value:.4f}" if lo is None or hi is None else f"{value:.4f} [{lo:.4f}, {hi:.4f}]"


def _n(row: dict[str, Any]) -> str:
    n = row.get("n")
    seeds = f" x {n['seeds']} seeds" if n and n.get("seeds", 1) > 1 else ""
    return "" if not n else f"{n['chips']} / {n['positions']} / {n['blocks']}{seeds}"


def _gain(c: dict[str, Any]) -> str:
    lo, hi = c["ci"]
    interval = "no interval" if lo is None or hi is None else f"[{lo:+.4f}, {hi:+.4f}]"
    return f"gain {c['gain']:+.4f} {interval}" + (f" ({c['reason']})" if c.get("reason") else "")


def _min_effects(min_effect: dict[str, float]) -> str:
    return ", ".join(f"{m} {v:g}" for m, v in min_effect.items())


def claim(task: str, a: dict[str, Any], b: dict[str, Any], comparison: dict[str, Any] | None) -> tuple[str, str]:
    """The verdict of a over b on the task's primary metric ("not applicable" when b cannot take the task's
    inputs, "not tested" when a number is missing) and its numbers."""
    metric = PRIMARY_METRIC[task]
    if NOT_APPLICABLE in b:
        return NOT_APPLICABLE, b[NOT_APPLICABLE]
    if metric not in a or metric not in b or comparison is None or "verdict" not in comparison:
        return "not tested", "missing" + (f": {b['missing']}" if "missing" in b else "")
    text = f"{a[metric]:.4f} vs {b[metric]:.4f} ({metric}, {METRIC_DIRECTIONS[metric]} is better), {_gain(comparison)}"
    return comparison["verdict"], text


def _claims(params: Params, baselines: dict, comparisons: dict) -> list[str]:
    """One verdict line per claim (scratch, then each pretraining variant of `finetune.variants`), and under it
    one line per task with the numbers and the interval."""
    define = params.pretrain_variants.define
    lines = []
    for title, other in (
        (f"Pretraining helps at {params.finetune.label_fraction:.0%} labels (pretrained beats scratch)", "scratch"),
        *((f"{define[v].claim} (pretrained beats `{v}`)", v) for v in params.finetune.variants if v in define),
    ):
        verdicts = {
            t: claim(t, baselines["pretrained"].get(t, {}), baselines.get(other, {}).get(t, {}),
                     comparisons.get(t, {}).get(f"pretrained vs {other}"))
            for t in TASKS
        }  # fmt: skip
        known = [v for v, _ in verdicts.values() if v not in ("not tested", NOT_APPLICABLE)]
        if not known:
            summary = "NOT TESTED (baseline missing or not applicable)"
        else:
            held, unsure, same = known.count("held"), known.count("inconclusive"), known.count("no difference")
            summary = f"HELD on {held} of {len(known)} tasks ({unsure} inconclusive, {same} no difference)"
        lines.append(f"- **{title}: {summary}.**")
        lines += [f"  - {task}: {word}: {text}" for task, (word, text) in verdicts.items()]
    return lines


def _trivial_warnings(comparisons: dict) -> list[str]:
    """A line per task whose pretrained model is not shown to beat one of its trivial baselines."""
    lines = []
    for task in (t for t in TASKS if comparisons.get(t)):
        for name in best_trivial_gap(task, comparisons.get(task, {})):
            c = comparisons.get(task, {}).get(f"pretrained vs {name}")
            what = f"{c['verdict']}, {_gain(c)}" if c else "not compared"
            lines.append(f"- **{task}: the fine-tuned msGFM does not beat the trivial `{name}` baseline** ({what}).")
    return lines


def _variant_table(baselines: dict) -> list[str]:
    """Test metrics (with intervals) of every variant and trivial baseline, one column per scalar metric."""
    metrics_order = sorted({m for v in baselines.values() for t in v.values() for m in t if m in METRIC_DIRECTIONS})
    lines = [
        "| variant | task | n | " + " | ".join(metrics_order) + " |",
        "|---|---|---|" + "---|" * len(metrics_order),
    ]
    for variant, tasks in baselines.items():
        for task in TASKS:
            if task not in tasks:
                continue
            row = tasks[task]
            why = next((k for k in ("missing", NOT_APPLICABLE) if k in row), None)
            if why:
                lines.append(f"| {variant} | {task} | | {why}: {row[why]} |")
                continue
            cells = [_ci(row, m) if m in row else "" for m in metrics_order]
            lines.append(f"| {variant} | {task} | {_n(row)} | " + " | ".join(cells) + " |")
    return lines


def _ablation_table(ablations: dict, comparisons: dict) -> list[str]:
    """The primary metric under every condition, and the clean set's gain over it (paired) with its verdict."""
    lines = ["| task | condition | value | clean's gain over it | the sensor matters |", "|---|---|---|---|---|"]
    for task, conditions in ablations.items():
        metric = PRIMARY_METRIC[task]
        for name, values in conditions.items():
            if "n/a" in values:
                lines.append(f"| {task} | {name} | n/a: {values['n/a']} | | |")
                continue
            c = comparisons.get(task, {}).get(f"clean vs {name}")
            gain, word = (_gain(c), c["verdict"]) if c else ("", "")
            lines.append(f"| {task} | {name} | {_ci(values, metric)} ({metric}) | {gain} | {word} |")
    return lines


def _generalisation_table(generalisation: dict) -> list[str]:
    """The primary metric (with interval and n) of every task on the test set, held-out AOIs and later dates."""
    lines = ["| task | test | held-out AOIs | later dates |", "|---|---|---|---|"]
    for task, sets in generalisation.items():
        metric = PRIMARY_METRIC[task]
        cells = [
            f"{_ci(sets[s], metric)} (n {_n(sets[s])})"
            if metric in sets.get(s, {})
            else f"n/a ({sets.get(s, {}).get('n/a', 'missing')})"
            for s in ("test", "holdout_aoi", "later")
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _absent_lines(generalisation: dict) -> list[str]:
    """One line per task and set naming the classes training never saw, with their share of the set."""
    names = {"test": "test set", "holdout_aoi": "held-out AOIs", "later": "later dates"}
    lines = []
    for task, sets in generalisation.items():
        for name, entry in sets.items():
            absent = entry.get(ABSENT_KEY) or {}
            parts = [
                f"{c['class']} ({code}): {c.get('chips', c.get('pixels'))} {'chips' if 'chips' in c else 'pixels'}, "
                f"{c['share']:.1%} of the set"
                for code, c in absent.items()
            ]
            if parts:
                lines.append(f"- {task}, {names.get(name, name)}: " + "; ".join(parts))
    return lines


def _seeds(seeds: list[int]) -> str:
    """How many fine-tuning seeds every fine-tuned number averages over."""
    if len(seeds) == 1:
        return f"one fine-tuning seed per model (offset {seeds[0]}: no interval covers the seed-to-seed spread)"
    return f"{len(seeds)} fine-tuning seeds per model (offsets {seeds}): values are their mean"


def render_report(
    params: Params,
    baselines: dict,
    ablations: dict,
    generalisation: dict,
    notes: dict[str, dict[str, str]],
    comparisons: dict | None = None,
) -> str:
    """The Markdown report: tables of every number with its interval and, plainly, which claims held."""
    cfg, ev = params.finetune, params.evaluate
    comparisons = comparisons or {}
    warnings = _trivial_warnings(comparisons)
    lines = [
        "# msGFM evaluation report",
        "",
        *(["## Tasks that do not beat their trivial baseline", "", *warnings, ""] if warnings else []),
        f"Label budget: {cfg.label_fraction:.0%} of the training chips; {cfg.trials} Optuna trials per task and "
        f"variant, {cfg.epochs} epochs each; {_seeds(cfg.seeds)}; held-out AOIs "
        f"{cfg.holdout_aois} ({'left out of' if params.pretrain.exclude_holdout_aois else 'seen by'} pretraining); "
        f"later dates: val/test places after {cfg.train_until}.",
        "",
        f"Intervals: {ev.confidence:.0%} percentile bootstrap, {ev.bootstrap_resamples} resamples of the test "
        f"set's chip {ev.bootstrap_unit}s (every chip of a drawn {ev.bootstrap_unit} comes with it"
        + ("" if len(cfg.seeds) == 1 else ", and of the fine-tuning seeds: a seed x chip interval")
        + "; a comparison resamples both models' chips (and seeds) together). n = chips / positions / blocks"
        + ("" if len(cfg.seeds) == 1 else " x seeds")
        + ". A claim *held* when the interval of the gain lies above zero and the gain is at least the metric's "
        f"minimum meaningful difference ({_min_effects(ev.min_effect)}); *no difference* when both models score "
        "every chip alike or the interval lies within +- that difference (or above zero with a smaller gain); "
        "*did not hold* when none of the interval is above zero; else (a zero-width interval too) it is "
        "*inconclusive*. Each verdict's reason follows its interval.",
        "",
        "## Claims on this run",
        "",
        *_claims(params, baselines, comparisons),
        "",
        "## Test metrics per variant",
        "",
        "Trivial baselines, no learned weights: "
        + "; ".join(f"{t}: {', '.join(n)}" for t, n in TRIVIAL.items())
        + " (`class_prior`: the labelled training chips' class frequencies for every chip; `majority_class`: "
        "their most frequent pixel class everywhere; `input`: the cloudy chip; `hpf`: the HPF-fused MS the "
        "network corrects; `bicubic`: the degraded MS upsampled). Q is Wang-Bovik's on 8x8 sliding windows, "
        "UIQI_gauss torchmetrics' Gaussian-window variant; PSNR is capped at 100 dB per image.",
        "",
        *_variant_table(baselines),
        "",
        "## Modality ablations (pretrained msGFM, primary metric)",
        "",
        *_ablation_table(ablations, comparisons),
        "",
        "## Generalisation (pretrained msGFM, primary metric)",
        "",
        *_generalisation_table(generalisation),
        "",
        "## Classes absent from training",
        "",
        "Classes of a scored set that no training chip has: the model has no output for them, so the metrics "
        "above leave them out (a chip's other classes, a pixel ignored); `absent_from_train` in the metrics "
        "JSON lists them per entry.",
        "",
        *(_absent_lines(generalisation) or ["- none: every class of every scored set occurs in training."]),
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
