"""The gate runner on small hand-made tables: row-level quarantine, dataset-level failure, outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from msgfm.decisions import GateTableError, accepted_ids, read_gate
from msgfm.validation.gates import Check, GateFailed, run_gate, write_gate


def _checks(max_nodata: float = 0.5) -> list[Check]:
    import great_expectations as gx

    return [
        Check(
            "nodata_low",
            gx.expectations.ExpectColumnValuesToBeBetween(column="nodata", min_value=0, max_value=max_nodata),
            "nodata fraction {nodata:.2f} > " + f"{max_nodata}",
        ),
        Check("readable", gx.expectations.ExpectColumnValuesToBeInSet(column="error", value_set=[""]), "{error}"),
        Check(
            "bands",
            gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="bands", column_B="expected", or_equal=True, ignore_row_if="either_value_is_missing"
            ),
            "{bands} bands, expected {expected}",
        ),
        Check("unique_ids", gx.expectations.ExpectColumnValuesToBeUnique(column="id"), "duplicate id {id}", "dataset"),
    ]


def _table(ids: list[str]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "id": ids,
            "nodata": [0.1, 0.9, None, 0.0][:n],
            "error": ["", "", "zero-byte file", ""][:n],
            "bands": pd.array([3, 3, None, 2][:n], dtype="Int64"),
            "expected": pd.array([3, 3, 3, 3][:n], dtype="Int64"),
        }
    )


def test_row_failures_map_back_to_ids_with_readable_reasons(tmp_path):
    result = run_gate("toy", _table(["a", "b", "c", "d"]), _checks(), min_pass_rate=0.25)
    d = result.decisions.set_index("id")
    assert d["accepted"].to_dict() == {"a": True, "b": False, "c": False, "d": False}
    assert d.loc["b", "reasons"] == "nodata fraction 0.90 > 0.5"
    assert d.loc["c", "reasons"] == "zero-byte file"  # null statistics of an unreadable row are not blamed
    assert d.loc["d", "reasons"] == "2 bands, expected 3"
    assert result.passed, result.message
    assert result.report["failures_by_expectation"] == {"nodata_low": 1, "readable": 1, "bands": 1, "unique_ids": 0}
    table_path, report_path = write_gate(result, gates_dir=tmp_path / "gates", reports_dir=tmp_path / "reports")
    assert read_gate(table_path)["id"].tolist() == ["a", "b", "c", "d"]
    assert accepted_ids(table_path) == {"a"}
    report = json.loads(report_path.read_text())
    assert (report["rows_checked"], report["passed"], report["failed"]) == (4, 1, 3)
    assert {q["id"] for q in report["quarantined"]} == {"b", "c", "d"}


def test_low_pass_rate_fails_with_message():
    result = run_gate("toy", _table(["a", "b", "c", "d"]), _checks(), min_pass_rate=0.5)
    assert not result.passed
    with pytest.raises(GateFailed, match=r"accepted fraction 0.250 \(1/4\) is below gates.min_pass_rate 0.5"):
        result.raise_if_failed()


def test_dataset_check_failure_fails_gate_even_when_rows_pass():
    table = _table(["a", "a"])
    table.loc[1, "nodata"] = 0.2
    result = run_gate("toy", table, _checks(), min_pass_rate=0.0)
    assert result.failed_dataset_checks == ["unique_ids"]
    assert not result.passed and "dataset-level check 'unique_ids' failed" in result.message
    assert result.decisions["reasons"].tolist() == ["duplicate id a", "duplicate id a"]


def test_empty_table_and_missing_column_are_clear_errors():
    result = run_gate("toy", _table([])[["id"]], _checks(), min_pass_rate=0.0)
    assert not result.passed and "no rows to check" in result.message
    with pytest.raises(ValueError, match="no 'id' column"):
        run_gate("toy", pd.DataFrame({"x": [1]}), _checks(), min_pass_rate=0.0)
    broken = _table(["a"]).drop(columns=["nodata"])
    result = run_gate("toy", broken, _checks(), min_pass_rate=0.0)
    assert not result.passed and "check error nodata_low" in result.message


def test_accepted_ids_of_a_missing_or_malformed_gate_table_name_the_file_and_the_stage(tmp_path):
    with pytest.raises(GateTableError, match=r"coreg.parquet: not found; run `dvc repro validate_coreg` first"):
        accepted_ids(tmp_path / "coreg.parquet")
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(
        GateTableError, match=r"pairs.parquet: needs columns id and accepted; run `dvc repro validate_pairs`"
    ):
        accepted_ids(tmp_path / "pairs.parquet")
