"""Model registry and the champion/challenger gate of scheduled retraining.

A retrained model (the challenger) replaces the current champion unless it is worse beyond the interval
on a task's primary metric (msgfm.metrics.PRIMARY_METRIC): the evaluate stage gives every metric a
bootstrap interval (`{task: {metric: value, "n": {...}, "ci": {metric: [lo, hi]}}}`), and the champion
and challenger were scored on test sets that may differ, so the interval of the gain combines the two
intervals' half-widths in quadrature (each on its side); the challenger is blocked when that whole
interval lies below zero. A metric without an interval on either side falls back to the relative
`tolerance`; a task whose champion has no primary metric gates every metric that way. Other metrics are
listed, not gated. The decision is a pure function of two metrics tables, so it is testable without
training anything; `data/models/registry.json` keeps the champion and the history of decisions, each
citing the intervals it was decided on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgfm.geo.io import atomic_write_json

if TYPE_CHECKING:
    from msgfm.metrics import Direction

Metrics = dict[str, dict[str, Any]]
EVIDENCE_KEYS = ("n", "ci", "absent_from_train")
"""Keys of a task's table that hold the evidence (sample sizes, intervals, unscored classes), not a metric."""


class RegistryError(ValueError):
    """The registry file or a metrics table is unreadable or inconsistent; the message says which."""


def _resolvable(directions: dict[str, Direction]) -> dict[str, Direction]:
    """Lower-cased names, their families (the part before "_" or "@") and, for a mean, what it averages."""
    table: dict[str, Direction] = {}
    for name, direction in directions.items():
        family = re.split("[_@]", name.lower())[0]
        for key in (name.lower(), family, family[1:] if family.startswith("m") else family):
            table.setdefault(key, direction)
    return table


def metric_direction(metric: str, directions: dict[str, Direction] | None = None) -> Direction:
    """Return "max" or "min" for a metric name; unknown names are an error rather than a guess.

    The name is matched case-insensitively against msgfm.metrics.METRIC_DIRECTIONS (or
    `directions`), whole or by its prefix before "_" or "@", so "mAP_micro", "f1@macro" and "iou_water"
    (an IoU, as mIoU averages) all resolve.
    """
    if directions is None:
        from msgfm.metrics import METRIC_DIRECTIONS  # loads torch, which the rest of the gate never needs

        directions = METRIC_DIRECTIONS
    table = _resolvable(directions)
    name = metric.lower()
    for candidate in (name, name.split("_")[0], name.split("@")[0]):
        if candidate in table:
            return table[candidate]
    raise RegistryError(
        f"metric {metric!r}: unknown direction (is larger better?); known metrics: {', '.join(sorted(table))}"
    )


@dataclass(frozen=True)
class MetricComparison:
    """One row of the champion/challenger table."""

    task: str
    metric: str
    direction: Direction
    champion: float | None
    challenger: float | None
    relative_change: float | None  # signed, positive means the challenger is better
    acceptable: bool
    reason: str = ""
    gated: bool = True
    champion_ci: tuple[float, float] | None = None
    challenger_ci: tuple[float, float] | None = None
    gain_ci: tuple[float, float] | None = None  # interval of the gain (challenger better: positive)


@dataclass(frozen=True)
class Decision:
    """The outcome of the gate: promote or not, why, and the table it was decided on."""

    promote: bool
    reason: str
    tolerance: float
    rows: list[MetricComparison] = field(default_factory=list)

    def to_markdown(self, title: str = "Champion / challenger") -> str:
        """Render the decision and the metric table (with intervals) as Markdown (a Prefect artifact, a report)."""
        verdict = "**promoted**" if self.promote else "**not promoted**"
        lines = [
            f"# {title}",
            "",
            f"Challenger {verdict}: {self.reason}",
            "",
            "Rule: blocked when the interval of the gain on a primary metric lies below zero (the two intervals "
            f"combined); a metric without intervals may be at most {self.tolerance:.1%} worse (relative).",
            "",
            "| task | metric | better | champion | challenger | change | gain interval | gated | ok |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            change = "" if r.relative_change is None else f"{r.relative_change:+.2%}"
            ok = "yes" if r.acceptable else f"no ({r.reason})"
            better = "higher" if r.direction == "max" else "lower"
            gain = "" if r.gain_ci is None else f"[{r.gain_ci[0]:+.4g}, {r.gain_ci[1]:+.4g}]"
            lines.append(
                f"| {r.task} | {r.metric} | {better} | {_fmt(r.champion, r.champion_ci)} | "
                f"{_fmt(r.challenger, r.challenger_ci)} | {change} | {gain} | {'yes' if r.gated else 'no'} | {ok} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None, ci: tuple[float, float] | None = None) -> str:
    text = "-" if value is None else f"{value:.4g}"
    return text if ci is None else f"{text} [{ci[0]:.4g}, {ci[1]:.4g}]"


def _scalars(table: dict[str, Any]) -> dict[str, float]:
    """The metrics of a task's table (the evidence keys left out)."""
    return {k: v for k, v in table.items() if k not in EVIDENCE_KEYS}


def _interval(table: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """The [lo, hi] interval of a metric, if the table has a finite one."""
    ci = (table.get("ci") or {}).get(metric) if isinstance(table.get("ci"), dict) else None
    if not isinstance(ci, list | tuple) or len(ci) != 2 or any(not isinstance(x, int | float) for x in ci):
        return None
    return (float(ci[0]), float(ci[1])) if all(math.isfinite(x) for x in ci) else None


def gain_interval(
    direction: Direction, old: float, new: float, old_ci: tuple[float, float] | None, new_ci: tuple[float, float] | None
) -> tuple[float, float]:
    """Interval of the challenger's gain (positive: better): each side's half-widths added in quadrature."""
    o_lo, o_hi = old_ci or (old, old)
    n_lo, n_hi = new_ci or (new, new)
    if direction == "max":
        gain, down, up = new - old, math.hypot(new - n_lo, o_hi - old), math.hypot(n_hi - new, old - o_lo)
    else:
        gain, down, up = old - new, math.hypot(n_hi - new, old - o_lo), math.hypot(new - n_lo, o_hi - old)
    return gain - down, gain + up


def _check_metrics(name: str, metrics: Metrics) -> None:
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        raise RegistryError(f"{name} metrics: expected {{task: {{metric: value}}}}, got {type(metrics).__name__}")
    for task, table in metrics.items():
        for metric, value in _scalars(table).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RegistryError(f"{name} metrics: {task}.{metric} is not a finite number (got {value!r})")


def _row(task: str, metric: str, champion: dict, challenger: dict, tolerance: float, gated: bool,
         directions: dict[str, Direction] | None) -> MetricComparison:  # fmt: skip
    """One metric of the champion against the challenger; a gated one decides by the interval (or tolerance)."""
    direction = metric_direction(metric, directions)
    old, new = champion[metric], _scalars(challenger).get(metric)
    old_ci, new_ci = _interval(champion, metric), _interval(challenger, metric)
    if new is None:
        return MetricComparison(task, metric, direction, old, None, None, not gated, "missing", gated, old_ci)
    gain = (new - old) if direction == "max" else (old - new)
    relative = gain / max(abs(old), 1e-12)
    interval = gain_interval(direction, old, new, old_ci, new_ci) if old_ci or new_ci else None
    if interval is not None:
        worse, why = interval[1] < 0, f"worse beyond the interval: gain [{interval[0]:+.4g}, {interval[1]:+.4g}]"
    else:
        worse, why = relative < -tolerance, f"{-relative:.2%} worse, no interval"
    acceptable = not (gated and worse)
    return MetricComparison(
        task, metric, direction, old, new, relative, acceptable, "" if acceptable else why, gated, old_ci, new_ci,
        interval,
    )  # fmt: skip


def compare(
    champion: Metrics | None,
    challenger: Metrics,
    tolerance: float,
    directions: dict[str, Direction] | None = None,
    primary: dict[str, str] | None = None,
) -> Decision:
    """Decide whether the challenger replaces the champion (the rule: this module's docstring).

    The challenger is promoted when there is no champion yet, or when on no task's primary metric
    (`primary`, default msgfm.metrics.PRIMARY_METRIC) it is worse beyond the interval. A primary metric
    the champion has and the challenger lacks blocks the promotion.
    """
    if tolerance < 0:
        raise RegistryError(f"tolerance must be >= 0, got {tolerance}")
    _check_metrics("challenger", challenger)
    if not challenger:
        return Decision(False, "the challenger has no metrics", tolerance)
    if champion is None:
        rows = [
            MetricComparison(task, m, metric_direction(m, directions), None, v, None, True,
                             challenger_ci=_interval(table, m))
            for task, table in sorted(challenger.items())
            for m, v in sorted(_scalars(table).items())
        ]  # fmt: skip
        return Decision(True, "no champion yet; the first evaluated model becomes the champion", tolerance, rows)
    _check_metrics("champion", champion)
    if primary is None:
        from msgfm.metrics import PRIMARY_METRIC  # loads torch, which the rest of the gate never needs

        primary = PRIMARY_METRIC

    rows: list[MetricComparison] = []
    for task, table in sorted(champion.items()):
        mine = challenger.get(task, {})
        has_primary = primary.get(task) in _scalars(table)
        for metric in sorted(_scalars(table)):
            gated = metric == primary.get(task) if has_primary else True
            rows.append(_row(task, metric, table, mine, tolerance, gated, directions))
    for task, table in sorted(challenger.items()):
        for metric, new in sorted(_scalars(table).items()):
            if metric not in _scalars(champion.get(task, {})):
                direction = metric_direction(metric, directions)
                rows.append(MetricComparison(task, metric, direction, None, new, None, True, "new metric", False,
                                             challenger_ci=_interval(table, metric)))  # fmt: skip

    failed = [r for r in rows if not r.acceptable]
    if failed:
        worst = ", ".join(f"{r.task}.{r.metric} ({r.reason})" for r in failed)
        return Decision(False, f"worse than the champion beyond the interval on {worst}", tolerance, rows)
    cited = "; ".join(_cite(r) for r in rows if r.gated)
    return Decision(True, f"not worse than the champion beyond the interval on any primary metric ({cited})",
                    tolerance, rows)  # fmt: skip


def _cite(row: MetricComparison) -> str:
    """A gated row's evidence for the decision record: its gain interval, or the relative change without one."""
    if row.gain_ci is not None:
        return f"{row.task}.{row.metric} gain [{row.gain_ci[0]:+.4g}, {row.gain_ci[1]:+.4g}]"
    change = "n/a" if row.relative_change is None else f"{row.relative_change:+.2%}"
    return f"{row.task}.{row.metric} {change}, no interval"


def load_registry(path: str | Path) -> dict[str, Any]:
    """Read registry.json; a missing file is an empty registry (no champion, no history)."""
    path = Path(path)
    if not path.exists():
        return {"champion": None, "history": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{path}: unreadable model registry: {e}") from None
    if not isinstance(data, dict) or "history" not in data or "champion" not in data:
        raise RegistryError(f"{path}: not a model registry (expected keys 'champion' and 'history')")
    return data


def record_decision(
    path: str | Path,
    decision: Decision,
    challenger: Metrics,
    model_id: str,
    dvc_lock_sha256: str,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Append the decision to the registry's history and, if promoted, make the challenger champion."""
    registry = load_registry(path)
    entry = {
        "model_id": model_id,
        "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "dvc_lock_sha256": dvc_lock_sha256,
        "metrics": challenger,
        "promoted": decision.promote,
        "reason": decision.reason,
        "tolerance": decision.tolerance,
        "rule": "blocked when a primary metric's gain interval lies below zero (tolerance without intervals)",
        "comparison": [asdict(r) for r in decision.rows],
    }
    registry["history"].append(entry)
    if decision.promote:
        registry["champion"] = {k: entry[k] for k in ("model_id", "decided_at", "run_id", "dvc_lock_sha256", "metrics")}
    atomic_write_json(path, registry)
    return registry
