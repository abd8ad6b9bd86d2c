"""The gates' decisions tables: where each gate writes `{gate}.parquet` and how later stages read it.

A table has one row per checked unit: `id`, `accepted` (bool), `reasons`. The gates write it
(msgfm.validation.gates.write_gate); co-registration, pairing and the datasets read only the ids it accepted.
It sits below both sides so that readers need not import the validation package.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def gate_table(gates_dir: str | Path, gate: str) -> Path:
    """Where gate `gate` writes its decisions (`id`, `accepted`, `reasons`) under `gates_dir` (params gates.dir)."""
    return Path(gates_dir) / f"{gate}.parquet"


class GateTableError(OSError):
    """A gate's decisions table is missing or lacks its columns; the message names the file and the stage to run."""


def read_gate(path: str | Path) -> pd.DataFrame:
    """A gate's decisions table (`id`, `accepted`, `reasons`) as `write_gate` wrote it to `{gate}.parquet`.

    Raises GateTableError naming the file and the stage that writes it (`validate_{gate}`) when it is
    missing or lacks the `id` and `accepted` columns.
    """
    path = Path(path)
    stage = f"validate_{path.stem}"
    if not path.is_file():
        raise GateTableError(f"{path}: not found; run `dvc repro {stage}` first")
    decisions = pd.read_parquet(path)
    if not {"id", "accepted"} <= set(decisions.columns):
        raise GateTableError(f"{path}: needs columns id and accepted; run `dvc repro {stage}` again")
    return decisions


def accepted_ids(path: str | Path, error: type[Exception] = GateTableError) -> set[str]:
    """Ids the gate whose decisions table is at `path` accepted: all the next stage may read.

    A missing or malformed table raises `error` (the reading stage's own error type) with GateTableError's message.
    """
    try:
        decisions = read_gate(path)
    except GateTableError as e:
        if error is GateTableError:
            raise
        raise error(str(e)) from None
    return set(decisions.loc[decisions["accepted"].astype(bool), "id"].astype(str))
