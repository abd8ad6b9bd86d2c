"""Fault injection: each data stage killed with SIGKILL mid-run, then run again, ends as an uninterrupted run.

Every stage runs as a real `msgfm <stage>` subprocess in a copy of the tiny simulated world
(tests/tiny_world.py) cut back to the stage's inputs. The kill comes as soon as the stage's first
output file exists (the whole process group, as `kill -9` of a pipeline run would). Checked after the
kill: every file under a final name is complete (byte-identical to the uninterrupted run's file;
temporary files are hidden `.name.*.part` / `.partial` names) and no ledger lists a temporary file.
Checked after the rerun: the data files hash exactly as after one uninterrupted run.
Where a kill must land between two renames microseconds apart (pair's store, then its manifest), the
stage kills itself at a named point (`msgfm.faults.kill_point`, set by MSGFM_KILL_AT).
Network faults (404, 5xx, stalls, dropped connections resumed with Range, wrong checksums) are in
tests/test_download.py; pretraining's kill-and-resume is in tests/test_pretrain.py. Fine-tuning is
killed mid-study, during a trial after one has finished; the rerun resumes the Optuna study.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from msgfm.chips.store import ChipStoreError, open_accepted
from msgfm.config import load_params
from msgfm.faults import KILL_AT_ENV
from msgfm.geo.io import sha256_file

MSGFM = str(Path(sys.executable).with_name("msgfm"))
RUN_KEYS = {"seconds", "pixels_written", "fetched", "skipped", "bytes"}  # what this run did, not what it produced


@dataclass(frozen=True)
class StageCase:
    """One stage: its outputs (removed before the run), the glob of its first output, and params tweaks."""

    stage: str
    outputs: tuple[str, ...]
    first_output: str
    params: dict = field(default_factory=dict)
    reports: tuple[str, ...] = ()


CASES = [
    # one worker: items are fetched one after another, so the kill lands between items
    StageCase(
        "download",
        ("data/raw", "data/reports/download.json"),
        "data/raw/*/*/*.tif",
        {"download": {"workers": 1}},
        reports=("data/reports/download.json",),
    ),
    StageCase(
        "coregister",
        ("data/coreg", "data/reports/coregister.json"),
        "data/coreg/*/*.tif",
        reports=("data/reports/coregister.json",),
    ),
    # a fine stride makes the chip-writing pass long enough to be killed inside it
    StageCase(
        "pair", ("data/chips", "data/manifest.parquet"), "data/.chips.partial/*/*.npy", {"pair": {"stride_px": 8}}
    ),
]


def is_temporary(rel: str) -> bool:
    """Names the stages use while writing: atomic_path's `.name.XXXX.part`, download's `.part`, `.chips.partial`."""
    return any(part.startswith(".") or part.endswith((".part", ".partial")) for part in Path(rel).parts)


def snapshot(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under the stage's outputs, by path relative to `root`."""
    files: dict[str, str] = {}
    for out in outputs:
        path = root / out
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files.update({p.relative_to(root).as_posix(): sha256_file(p) for p in found})
    # the chip store is built in a hidden sibling folder of data/chips
    for hidden in root.glob("data/.*"):
        for p in [hidden] if hidden.is_file() else hidden.rglob("*"):
            if p.is_file():
                files[p.relative_to(root).as_posix()] = sha256_file(p)
    return files


def prepare(world: Path, dest: Path, case: StageCase) -> Path:
    """Copy the tiny world (mtimes kept) without the stage's outputs, with the case's params tweaks."""
    shutil.copytree(world, dest)
    for out in case.outputs:
        path = dest / out
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in case.params.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run_to_end(root: Path, stage: str) -> None:
    result = subprocess.run([MSGFM, stage, "--params", "params.yaml"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"msgfm {stage} failed in {root}:\n{result.stdout}\n{result.stderr}"


def kill_when(command: list[str], root: Path, ready: Callable[[], bool], poll_s: float, what: str) -> None:
    """Start `command` in `root`, SIGKILL its process group once `ready()`; fail if it ended first."""
    proc = subprocess.Popen(
        command, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300  # a safeguard against a hung stage, not a speed assertion
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(poll_s)
        assert proc.poll() is None, f"{' '.join(command[1:])} exited ({proc.returncode}) before {what}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def kill_after_first_output(root: Path, stage: str, first_output: str) -> None:
    """Start the stage, SIGKILL its process group once `first_output` matches a file; fail if it ended first."""
    command = [MSGFM, stage, "--params", "params.yaml"]
    kill_when(command, root, lambda: bool(final_files(root, first_output)), 0.002, "it could be killed mid-run")


def final_files(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern`, temporary names included only when the pattern asks for them."""
    wants_temporary = is_temporary(pattern)
    return [p for p in root.glob(pattern) if wants_temporary or not is_temporary(p.relative_to(root).as_posix())]


def ledger_paths(root: Path) -> list[str]:
    """Every file path the stage ledgers/manifests written so far point at (relative to their folders)."""
    paths: list[str] = []
    ledger = root / "data/raw/acquisitions.parquet"
    if ledger.is_file():
        table = pd.read_parquet(ledger)
        paths += [p for a in table["assets"] for p in json.loads(a).values()] + table["item_path"].tolist()
    rasters = root / "data/coreg/rasters.parquet"
    if rasters.is_file():
        paths += pd.read_parquet(rasters)["path"].dropna().tolist()
    index = root / "data/chips/index.json"
    if index.is_file():
        paths += [a["file"] for shard in json.loads(index.read_text())["shards"] for a in shard["arrays"].values()]
    return paths


def report_without_timing(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in RUN_KEYS}


@pytest.mark.parametrize("case", CASES, ids=[c.stage for c in CASES])
def test_stage_killed_mid_run_resumes_to_the_uninterrupted_result(case: StageCase, tiny_world: Path, tmp_path):
    reference = prepare(tiny_world, tmp_path / "reference", case)
    run_to_end(reference, case.stage)
    expected = snapshot(reference, case.outputs)
    assert expected and not [f for f in expected if is_temporary(f)], "an uninterrupted run left temporary files"

    root = prepare(tiny_world, tmp_path / "killed", case)
    kill_after_first_output(root, case.stage, case.first_output)
    after_kill = snapshot(root, case.outputs)
    complete = {f: h for f, h in after_kill.items() if not is_temporary(f)}
    if not is_temporary(case.first_output):
        assert complete, f"the kill left no output of {case.stage} at all"
    # nothing under a final name is partial: each such file is byte-identical to the uninterrupted run's
    differing = sorted(f for f, h in complete.items() if expected.get(f) != h and f not in case.reports)
    assert not differing, f"{case.stage}: files under final names differ after the kill: {differing}"
    assert not [p for p in ledger_paths(root) if is_temporary(p)], "a ledger lists a temporary file"

    run_to_end(root, case.stage)
    resumed = snapshot(root, case.outputs)
    final = {f: h for f, h in resumed.items() if not is_temporary(f) and f not in case.reports}
    assert final == {f: h for f, h in expected.items() if f not in case.reports}
    for report in case.reports:
        assert report_without_timing(root / report) == report_without_timing(reference / report)
    # a file the kill caught inside atomic_path is removed when the rerun writes that target
    leftovers = sorted(f for f in resumed if is_temporary(f))
    assert not leftovers, f"{case.stage}: temporary files left after the rerun: {leftovers}"
    assert not [p for p in ledger_paths(root) if is_temporary(p)]
    print(f"{case.stage}: killed mid-run, resumed; {len(final)} files as uninterrupted")


@pytest.mark.slow
def test_pair_killed_while_replacing_a_store_leaves_the_previous_one_whole(tiny_world: Path, tmp_path):
    """A rerun of pair with new params, killed while building the new store: the old store and manifest stay."""
    case = StageCase("pair", (), "data/.chips.partial/*/*.npy", {"pair": {"stride_px": 8}})
    outputs = ("data/chips", "data/manifest.parquet")
    previous = snapshot(tiny_world, outputs)
    reference = prepare(tiny_world, tmp_path / "reference", case)
    run_to_end(reference, "pair")
    expected = snapshot(reference, outputs)
    assert set(expected) == set(previous) and expected != previous  # the new params give a different store

    root = prepare(tiny_world, tmp_path / "killed", case)
    kill_after_first_output(root, "pair", case.first_output)
    after_kill = {f: h for f, h in snapshot(root, outputs).items() if not is_temporary(f)}
    assert after_kill == previous  # store and manifest: the previous run's, whole and consistent
    from msgfm.chips.store import ChipStore

    store, manifest = ChipStore(root / "data/chips"), pd.read_parquet(root / "data/manifest.parquet")
    assert {s: store.count(s) for s in store.sensors} == manifest["sensor"].value_counts().to_dict()

    run_to_end(root, "pair")
    assert {f: h for f, h in snapshot(root, outputs).items() if not is_temporary(f)} == expected


def test_pair_killed_between_store_and_manifest_is_refused_then_rerun(tiny_world: Path, tmp_path):
    """Killed after the new store is in place but before its manifest is: readers refuse the pair, a rerun fixes it."""
    case = StageCase("pair", (), "", {"pair": {"stride_px": 16}})  # new params: a store unlike the previous one
    outputs = ("data/chips", "data/manifest.parquet")
    previous = snapshot(tiny_world, outputs)
    reference = prepare(tiny_world, tmp_path / "reference", case)
    run_to_end(reference, "pair")
    expected = snapshot(reference, outputs)
    assert expected["data/manifest.parquet"] != previous["data/manifest.parquet"]

    root = prepare(tiny_world, tmp_path / "killed", case)
    env = {**os.environ, KILL_AT_ENV: "pair:store_committed"}
    killed = subprocess.run([MSGFM, "pair", "--params", "params.yaml"], cwd=root, env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    after_kill = {f: h for f, h in snapshot(root, outputs).items() if not is_temporary(f)}
    new_store = {f: h for f, h in expected.items() if f.startswith("data/chips/")}
    assert {f: h for f, h in after_kill.items() if f.startswith("data/chips/")} == new_store
    assert after_kill["data/manifest.parquet"] == previous["data/manifest.parquet"]  # the kill came in between

    message = "data/manifest.parquet does not match data/chips/index.json: re-run `dvc repro pair`"
    with pytest.raises(ChipStoreError) as refused:
        open_accepted(root / "data/chips", root / "data/manifest.parquet", root / "data/gates/pairs.parquet")
    assert str(refused.value).replace(f"{root}/", "") == message
    gate = subprocess.run(
        [MSGFM, "validate_pairs", "--params", "params.yaml"], cwd=root, capture_output=True, text=True
    )
    assert gate.returncode == 2 and message in gate.stderr

    run_to_end(root, "pair")
    resumed = snapshot(root, outputs)
    assert {f: h for f, h in resumed.items() if not is_temporary(f)} == expected
    assert not [f for f in resumed if is_temporary(f)], "the rerun left the killed run's temporary files"
    store, rows = open_accepted(root / "data/chips", root / "data/manifest.parquet", root / "data/gates/pairs.parquet")
    assert len(rows) > 0 and store.chip_px == 32


FINETUNE = {  # three trials of two epochs on the tiny world; no pruning, so every trial runs to its end
    "label_fraction": 1.0,
    "trials": 3,
    "epochs": 2,
    "min_steps_per_epoch": 4,
    "pruner_warmup_epochs": 2,
    "batch_sizes": [8],
    "holdout_aois": [],
    "train_until": None,
    "threads": 1,
    "variants": ["pretrained"],
}


def trial_states(db: Path) -> list[str]:
    """States of the study's trials in trial order, read from Optuna's SQLite file (empty until it exists)."""
    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return [state for (state,) in con.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # the table is not created yet, or the writer holds the lock
        return []


@pytest.mark.slow
def test_finetune_killed_mid_study_resumes_the_study_and_saves_its_best_trial(tiny_world: Path, tmp_path, caplog):
    """kill -9 during a trial after one finished; the rerun keeps the finished trials and saves the best one."""
    import optuna
    import torch
    from optuna.trial import TrialState
    from tiny_world import working_directory

    from msgfm.evaluation.evaluate import load_finetuned
    from msgfm.models import create_model_from_params
    from msgfm.models.finetuned import BEST_FILE, WEIGHTS_FILE
    from msgfm.models.hub import save_pretrained, save_weights
    from msgfm.training.finetune import finetune_task_data, run_finetune
    from msgfm.training.study import open_study

    root = tmp_path / "p"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns("checkpoints", "models", "metrics", "plots"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(FINETUNE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with working_directory(root):
        p = load_params("params.yaml")
        torch.manual_seed(0)
        save_pretrained(create_model_from_params(p.model), p.finetune.pretrained_model)  # stands in for pretraining
    task, out = "classification", root / "data/models/classification"
    command = [MSGFM, "finetune", "--task", task, "--params", "params.yaml"]

    def later_trial_running() -> bool:
        states = trial_states(out / "optuna.db")
        return "COMPLETE" in states and states[-1] == "RUNNING"

    kill_when(command, root, later_trial_running, 0.02, "a later trial began")
    states = trial_states(out / "optuna.db")
    killed = len(states) - 1
    assert states[-1] == "RUNNING" and states.count("COMPLETE") == killed >= 1, states
    assert not (root / "data/metrics/finetune/classification.json").exists()

    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with working_directory(root):
        p = load_params("params.yaml")
        study = open_study(p, finetune_task_data(p, task), "pretrained")
    trials = study.get_trials(deepcopy=False)
    assert trials[killed].state == TrialState.FAIL  # the trial the kill interrupted
    assert all(t.state == TrialState.COMPLETE for t in trials[:killed])  # kept, not rerun
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == FINETUNE["trials"] == len(trials) - 1
    summary = json.loads((root / "data/metrics/finetune/classification.json").read_text())
    assert summary["pretrained"]["trials_finished"] == FINETUNE["trials"]

    best = json.loads((out / "pretrained" / BEST_FILE).read_text())
    assert best["trial"] == study.best_trial.number and best["study"] == study.study_name
    assert best["params"] == study.best_trial.params
    assert math.isclose(best["value"], study.best_value, rel_tol=1e-4)
    assert best["sha256"] == sha256_file(out / "pretrained" / WEIGHTS_FILE)
    with working_directory(root):
        loaded = load_finetuned(load_params("params.yaml"), task, "pretrained")
    assert not isinstance(loaded, str), loaded
    leftovers = [f.relative_to(root).as_posix() for f in (root / "data").rglob("*") if is_temporary(f.name)]
    assert not leftovers, f"temporary files left after the rerun: {leftovers}"

    # what a kill between _save_best's two writes leaves: a later trial's weights beside best.json
    model, _ = loaded
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.01)
    save_weights(model, out / "pretrained" / WEIGHTS_FILE)
    with working_directory(root):
        refused = load_finetuned(load_params("params.yaml"), task, "pretrained")
    assert isinstance(refused, str) and "model.safetensors does not match" in refused
    with working_directory(root), caplog.at_level(logging.INFO, logger="msgfm.training.finetune"):
        run_finetune(load_params("params.yaml"), task)  # what the rerun does, in this process
    assert f"retraining best trial {best['trial']}" in caplog.text
    again = json.loads((out / "pretrained" / BEST_FILE).read_text())
    assert again["trial"] == best["trial"] and again["sha256"] == sha256_file(out / "pretrained" / WEIGHTS_FILE)
    assert math.isclose(again["value"], study.best_value, rel_tol=1e-4)
    assert len(optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{out / 'optuna.db'}").trials) == 4
