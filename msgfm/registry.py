"""Model registry and the champion/challenger gate of scheduled retraining.

A retrained model (the challenger) replaces the current champion only if it is not worse than the
champion by more than a relative tolerance on every metric of every task the champion was scored on.
The decision is a pure function of two metrics tables `{task: {metric: value}}`, so it is testable
without training anything; `data/models/registry.json` keeps the champion and the history of decisions.
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

Metrics = dict[str, dict[str, float]]


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


@dataclass(frozen=True)
class Decision:
    """The outcome of the gate: promote or not, why, and the table it was decided on."""

    promote: bool
    reason: str
    tolerance: float
    rows: list[MetricComparison] = field(default_factory=list)

    def to_markdown(self, title: str = "Champion / challenger") -> str:
        """Render the decision and the metric table as Markdown (a Prefect artifact, a report)."""
        verdict = "**promoted**" if self.promote else "**not promoted**"
        lines = [
            f"# {title}",
            "",
            f"Challenger {verdict}: {self.reason}",
            "",
            f"Tolerance: a metric may be at most {self.tolerance:.1%} worse than the champion's (relative).",
            "",
            "| task | metric | better | champion | challenger | change | ok |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            change = "" if r.relative_change is None else f"{r.relative_change:+.2%}"
            ok = "yes" if r.acceptable else f"no ({r.reason})"
            better = "higher" if r.direction == "max" else "lower"
            lines.append(
                f"| {r.task} | {r.metric} | {better} | {_fmt(r.champion)} | {_fmt(r.challenger)} | {change} | {ok} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _check_metrics(name: str, metrics: Metrics) -> None:
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        raise RegistryError(f"{name} metrics: expected {{task: {{metric: value}}}}, got {type(metrics).__name__}")
    for task, table in metrics.items():
        for metric, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RegistryError(f"{name} metrics: {task}.{metric} is not a finite number (got {value!r})")


def compare(
    champion: Metrics | None,
    challenger: Metrics,
    tolerance: float,
    directions: dict[str, Direction] | None = None,
) -> Decision:
    """Decide whether the challenger replaces the champion.

    The challenger is promoted when there is no champion yet, or when on every task and metric the
    champion was scored on the challenger is at most `tolerance` (relative to the champion's value)
    worse. A task or metric the champion has and the challenger lacks blocks the promotion.
    """
    if tolerance < 0:
        raise RegistryError(f"tolerance must be >= 0, got {tolerance}")
    _check_metrics("challenger", challenger)
    if not challenger:
        return Decision(False, "the challenger has no metrics", tolerance)
    if champion is None:
        rows = [
            MetricComparison(task, m, metric_direction(m, directions), None, v, None, True)
            for task, table in sorted(challenger.items())
            for m, v in sorted(table.items())
        ]
        return Decision(True, "no champion yet; the first evaluated model becomes the champion", tolerance, rows)
    _check_metrics("champion", champion)

    rows: list[MetricComparison] = []
    for task, table in sorted(champion.items()):
        for metric, old in sorted(table.items()):
            direction = metric_direction(metric, directions)
            new = challenger.get(task, {}).get(metric)
            if new is None:
                rows.append(MetricComparison(task, metric, direction, old, None, None, False, "missing"))
                continue
            gain = (new - old) if direction == "max" else (old - new)
            relative = gain / max(abs(old), 1e-12)
            acceptable = relative >= -tolerance
            reason = "" if acceptable else f"{-relative:.2%} worse"
            rows.append(MetricComparison(task, metric, direction, old, new, relative, acceptable, reason))
    for task, table in sorted(challenger.items()):
        for metric, new in sorted(table.items()):
            if metric not in champion.get(task, {}):
                direction = metric_direction(metric, directions)
                rows.append(MetricComparison(task, metric, direction, None, new, None, True, "new metric"))

    failed = [r for r in rows if not r.acceptable]
    if failed:
        worst = ", ".join(f"{r.task}.{r.metric} ({r.reason})" for r in failed)
        return Decision(False, f"worse than the champion beyond tolerance on {worst}", tolerance, rows)
    return Decision(True, "not worse than the champion beyond tolerance on any task", tolerance, rows)


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
        "comparison": [asdict(r) for r in decision.rows],
    }
    registry["history"].append(entry)
    if decision.promote:
        registry["champion"] = {k: entry[k] for k in ("model_id", "decided_at", "run_id", "dvc_lock_sha256", "metrics")}
    atomic_write_json(path, registry)
    return registry
