"""The gate runner: a Great Expectations 1.x suite over a table describing a stage's outputs.

A gate sits between two stages. The producer's outputs are described by a pandas table with one
row per checked unit (item, raster, chip) and an `id` column. The gate runs a GX suite on that
table, maps GX's unexpected-row lists back to ids, and writes

- `{gates.dir}/{gate}.parquet` (`gate_table`; data/gates by default): `id`, `accepted` (bool), `reasons`
  (semicolon-separated, empty when accepted). The next stage reads only the ids it accepted (`accepted_ids(path)`).
  Nothing is deleted.
- `{gates.reports_dir}/{gate}.json` (data/reports/gates by default): rows checked, passed, failed, pass
  rate, failures by check, dataset-level check results, and the quarantined ids with their reasons (a DVC
  metric).

The gate fails (`GateFailed`, after writing both files so the report can be read) when the
accepted fraction is below `min_pass_rate` or when a dataset-level check fails.

How to define a gate (see `msgfm/validation/raw.py` for a full one):

    from msgfm.validation.gates import Check, run_gate, write_gate

    def coreg_checks(cfg) -> list[Check]:
        import great_expectations as gx  # imported here: GX takes seconds to import

        return [
            # scope="row" (default): failing rows are quarantined with `reason`, formatted with
            # the row's values (any column of the table, by name, with format specs).
            Check(
                "residual_small",
                gx.expectations.ExpectColumnValuesToBeBetween(column="residual_px", max_value=cfg.max_residual_px),
                "residual misregistration {residual_px:.2f} px > " + f"{cfg.max_residual_px} px",
            ),
            # scope="dataset": a failure fails the whole gate (any rows it names are also quarantined).
            Check("unique_ids", gx.expectations.ExpectColumnValuesToBeUnique(column="id"), "duplicate id", "dataset"),
        ]

    result = run_gate("coreg", table, coreg_checks(cfg), min_pass_rate=cfg.min_pass_rate)
    write_gate(result, gates_dir=cfg.dir, reports_dir=cfg.reports_dir)
    result.raise_if_failed()  # GateFailed with a readable message; the CLI turns it into exit code 1

Rules for checks: use expectations that report unexpected rows (column-map and column-pair
expectations: values between, in set, not null, pair A > B, ...) for row-level checks; GX skips
null values in most of them, so a row already failing "readable" is not also blamed for NaN
statistics. Table-level expectations (row count, columns exist) only make sense as
scope="dataset". A check whose expectation raises inside GX (for example a missing column) is a
gate definition error and fails the gate with GX's message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from msgfm.decisions import gate_table
from msgfm.geo.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

_ROW_KEY = "__gate_row__"
"""Column the runner adds so GX's unexpected rows map back to table rows even when ids repeat."""


class GateFailed(RuntimeError):
    """The gate rejected the dataset: too few accepted rows or a failed dataset-level check."""


@dataclass(frozen=True)
class Check:
    """One expectation of a gate, the readable reason recorded when a row fails it, and its scope."""

    name: str
    """Stable short name; the key in the report's `failures_by_expectation`."""
    expectation: Any
    """A `great_expectations.expectations.Expectation` instance (built inside a function)."""
    reason: str
    """Reason recorded for a failing row; `str.format`-ed with the row's columns (falls back to the raw text)."""
    scope: Literal["row", "dataset"] = "row"
    """"row": failing rows are quarantined. "dataset": failure also fails the whole gate."""


@dataclass
class GateResult:
    """Outcome of one gate run: the per-row decisions, the metric report and the verdict."""

    gate: str
    decisions: pd.DataFrame
    """One row per table row: `id`, `accepted`, `reasons`."""
    report: dict[str, Any]
    passed: bool
    message: str
    failed_dataset_checks: list[str] = field(default_factory=list)

    @property
    def accepted_ids(self) -> list[str]:
        """Ids of the accepted rows, in table order."""
        return self.decisions.loc[self.decisions["accepted"], "id"].tolist()

    def raise_if_failed(self) -> None:
        """Raise GateFailed with the verdict message when the gate did not pass."""
        if not self.passed:
            raise GateFailed(self.message)


def _quiet_gx() -> None:
    """Keep GX's analytics off and its logging and progress bars out of stage output."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _format_reason(template: str, row: dict[str, Any]) -> str:
    try:
        return template.format(**row)
    except (KeyError, IndexError, ValueError, TypeError):
        return template


def run_gate(
    gate: str,
    table: pd.DataFrame,
    checks: Sequence[Check],
    *,
    min_pass_rate: float,
    id_column: str = "id",
    keep: Sequence[str] = (),
) -> GateResult:
    """Run `checks` as one GX suite over `table` and decide, per row, accepted or quarantined with reasons; the
    `keep` columns (measures and notes a reader of the decisions needs) are copied beside each decision."""
    if id_column not in table.columns:
        raise ValueError(f"gate {gate}: the table has no {id_column!r} column (columns: {list(table.columns)})")
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"gate {gate}: check names must be unique, got {names}")
    df = table.reset_index(drop=True).copy()
    df[_ROW_KEY] = range(len(df))
    outcome = _run_checks(gate, df, checks)
    accepted = [not r for r in outcome.reasons]
    decisions = pd.DataFrame(
        {
            "id": df[id_column].astype(str).tolist(),
            "accepted": pd.Series(accepted, dtype=bool),
            "reasons": ["; ".join(r) for r in outcome.reasons],
        }
        | {column: df[column].tolist() for column in keep}
    )
    n = len(df)
    n_ok = int(sum(accepted))
    pass_rate = n_ok / n if n else 0.0
    failed_dataset = sorted(k for k, ok in outcome.dataset_results.items() if not ok)
    static = {c.name: c.reason for c in checks if "{" not in c.reason}  # reasons that name no row's values
    failed = [f"{name!r} failed: {static[name]}" if name in static else f"{name!r} failed" for name in failed_dataset]
    problems = _problems(n, n_ok, min_pass_rate, failed, outcome.errors)
    passed = not problems
    message = f"gate {gate}: passed, {n_ok}/{n} accepted" if passed else f"gate {gate} failed: " + "; ".join(problems)
    quarantined = [
        {"id": i, "reasons": r} for i, r, ok in zip(decisions["id"], outcome.reasons, accepted, strict=True) if not ok
    ]
    report = {
        "gate": gate,
        "rows_checked": n,
        "passed": n_ok,
        "failed": n - n_ok,
        "pass_rate": round(pass_rate, 6),
        "min_pass_rate": min_pass_rate,
        "success": passed,
        "failures_by_expectation": outcome.failures,
        "dataset_checks": outcome.dataset_results,
        "errors": outcome.errors,
        "quarantined": quarantined,
    }
    return GateResult(gate, decisions, report, passed, message, failed_dataset)


@dataclass
class _Outcome:
    """What the suite found: reasons per row, failing rows per check, dataset-level results, check errors."""

    reasons: list[list[str]]
    failures: dict[str, int]
    dataset_results: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _run_checks(gate: str, df: pd.DataFrame, checks: Sequence[Check]) -> _Outcome:
    """Validate `df` (with its row keys) and collect each check's failing rows as readable reasons."""
    rows = df.to_dict(orient="records")
    outcome = _Outcome([[] for _ in rows], {c.name: 0 for c in checks})
    if not (len(df) and checks):
        return outcome
    for check, (success, row_keys, error) in zip(checks, _validate(gate, df, checks), strict=True):
        if error:
            outcome.errors.append(f"{check.name}: {error}")
        outcome.failures[check.name] = len(row_keys)
        for k in row_keys:
            outcome.reasons[k].append(_format_reason(check.reason, rows[k]))
        if check.scope == "dataset":
            outcome.dataset_results[check.name] = bool(success) and not error
        elif error:
            outcome.dataset_results[check.name] = False
    return outcome


def _problems(n: int, n_ok: int, min_pass_rate: float, failed_dataset: list[str], errors: list[str]) -> list[str]:
    """Why the gate fails (empty when it passes): no rows, too few accepted, failed dataset checks (each "'name'
    failed", with its reason when that names no row), check errors."""
    problems = []
    if n == 0:
        problems.append("no rows to check (the producing stage wrote nothing)")
    elif n_ok / n < min_pass_rate:
        problems.append(f"accepted fraction {n_ok / n:.3f} ({n_ok}/{n}) is below gates.min_pass_rate {min_pass_rate}")
    for check in failed_dataset:
        problems.append(f"dataset-level check {check}")
    problems.extend(f"check error {e}" for e in errors)
    return problems


def _validate(gate: str, df: pd.DataFrame, checks: Sequence[Check]) -> list[tuple[bool, list[int], str]]:
    """Run the suite on an ephemeral GX context; per check: (success, failing row keys, error text)."""
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (
        context.data_sources.add_pandas(f"{gate}_source")
        .add_dataframe_asset(f"{gate}_table")
        .add_batch_definition_whole_dataframe(f"{gate}_all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{gate}_suite"))
    for check in checks:
        suite.add_expectation(check.expectation)
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=gate, data=batch, suite=suite))
    result = validation.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [_ROW_KEY]},
    )
    by_id = {r.expectation_config.id: r for r in result.results}
    outcomes = []
    for check in checks:
        r = by_id.get(check.expectation.id)
        if r is None:
            outcomes.append((False, [], "GX returned no result for this expectation"))
            continue
        error = _exception_message(r.exception_info)
        if error:
            outcomes.append((False, [], error))
            continue
        unexpected = (r.result or {}).get("unexpected_index_list") or []
        keys = sorted({int(u[_ROW_KEY]) for u in unexpected if isinstance(u, dict) and _ROW_KEY in u})
        outcomes.append((bool(r.success), keys, ""))
    return outcomes


def _exception_message(info: dict | None) -> str:
    """GX's error text for an expectation that raised (flat, or nested per metric), else ''."""
    if not info:
        return ""
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    messages = {
        str(c.get("exception_message") or "expectation raised") for c in candidates if c.get("raised_exception")
    }
    return "; ".join(sorted(messages))


def write_gate(result: GateResult, *, gates_dir: str | Path, reports_dir: str | Path) -> tuple[Path, Path]:
    """Write the decisions parquet and the JSON metric report atomically; return both paths."""
    table_path = gate_table(gates_dir, result.gate)
    report_path = Path(reports_dir) / f"{result.gate}.json"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(table_path, suffix=".parquet") as tmp:
        result.decisions.to_parquet(tmp, index=False)
    atomic_write_json(report_path, result.report)
    if not result.passed and "(report: " not in result.message:
        result.message += f" (report: {report_path})"
    log.info("%s", result.message)
    return table_path, report_path
