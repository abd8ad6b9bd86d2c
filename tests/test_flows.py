"""Prefect flows over real DVC: the pipeline flow, the retrain flow and its lock, the deployments.

Each test that runs DVC works in a copy of the project in a temporary git repository (tests/dvc_repo.py:
dvc.yaml with the real `simulate` stage, a tiny params.yaml derived from the project's, the msgfm sources),
under one temporary Prefect server for the session (prefect_test_harness).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dvc_repo import DVC, REPO_ROOT, make_repo, run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker
from prefect.testing.utilities import prefect_test_harness
from prefect.utilities.callables import parameter_schema
from tiny_world import whole_pipeline_params

from flows.deployments import PIPELINE_DEPLOYMENT, RETRAIN_DEPLOYMENT, build_deployments, render_prefect_yaml
from flows.lock import LockBusy, RunLock
from flows.pipeline import PipelineError, RetryPolicy, pipeline, plan_stages
from flows.retrain import new_acquisitions, retrain
from msgfm.config import load_params
from msgfm.geo.io import sha256_file
from msgfm.registry import EVIDENCE_KEYS


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One temporary Prefect server (own SQLite database) for every flow run of this session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _tiny_params() -> dict:
    """The project's params.yaml with a tiny simulated world (1 AOI, 48 px, 2 dates per sensor)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["simulate"].update(
        aois=params["simulate"]["aois"][:1], size_px=48, fine_size_px=64, s2_dates=2, s1_dates=2, rgb_dates=1
    )
    params["simulate"]["dsm_dates"] = 1
    return params


def _simulate_only_dvc_yaml() -> dict:
    """The project's dvc.yaml reduced to its `simulate` stage, exactly as the project defines it."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    return {"stages": {"simulate": stages["simulate"]}}


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory) -> Path:
    """The tiny simulate-only repository, made once; tests copy it (the copy keeps its git history)."""
    return make_repo(tmp_path_factory.mktemp("template") / "repo", _simulate_only_dvc_yaml(), _tiny_params())


@pytest.fixture(scope="session")
def shell_repo(template_repo, tmp_path_factory) -> Path:
    """The template after a shell `dvc repro simulate`: the reference dvc.lock, and a simulated world."""
    repo = tmp_path_factory.mktemp("shell") / "repo"
    shutil.copytree(template_repo, repo, symlinks=True)
    run([*DVC, "repro", "simulate"], repo)
    return repo


@pytest.fixture()
def sim_repo(template_repo, tmp_path) -> Path:
    """A fresh copy of the template: nothing reproduced yet."""
    shutil.copytree(template_repo, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


@pytest.fixture()
def simulated_repo(shell_repo, tmp_path) -> Path:
    """A copy of the repository whose simulate stage has run (dvc.lock and data/source present)."""
    shutil.copytree(shell_repo, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def _lock_stage(repo: Path, stage: str) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]


def _flow_run_logs(flow_run_id) -> list[str]:
    """Every log message the Prefect server holds for a flow run (its task runs included)."""
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


# --- stage discovery ---------------------------------------------------------------------------------


def test_plan_follows_the_project_dvc_graph():
    """Every stage of the project's dvc.yaml is planned, after every stage whose outputs it reads."""
    from dvc.repo import Repo

    order = plan_stages(REPO_ROOT)
    assert "simulate" in order
    with Repo(str(REPO_ROOT)) as repo:
        graph = repo.index.graph
        names = {stage: stage.name for stage in graph.nodes}
        assert sorted(order) == sorted(names.values())
        for stage, upstream in graph.edges:  # edge: stage depends on upstream
            assert order.index(names[upstream]) < order.index(names[stage]), (names[upstream], names[stage])
    assert plan_stages(REPO_ROOT, target="simulate") == ["simulate"]
    with pytest.raises(PipelineError, match="unknown stage"):
        plan_stages(REPO_ROOT, stages=["no_such_stage"])


# --- the pipeline flow on the real simulate stage -----------------------------------------------------


def test_pipeline_flow_matches_shell_dvc_repro_then_skips(sim_repo, shell_repo):
    state = pipeline(target="simulate", repo_dir=str(sim_repo), return_state=True)
    assert state.is_completed(), state.message
    [first] = state.result()
    assert (first.stage, first.status) == ("simulate", "ran")
    ours, theirs = _lock_stage(sim_repo, "simulate"), _lock_stage(shell_repo, "simulate")
    assert ours["outs"] == theirs["outs"]  # same md5, size and file count of data/source
    assert ours["deps"] == theirs["deps"] and ours["params"] == theirs["params"]
    assert ours["outs"][0]["nfiles"] > 10
    assert "Running stage 'simulate'" in "\n".join(_flow_run_logs(state.state_details.flow_run_id))

    catalog = sim_repo / "data" / "source" / "catalog.json"
    mtime, lock_bytes = catalog.stat().st_mtime_ns, (sim_repo / "dvc.lock").read_bytes()
    again = pipeline(target="simulate", repo_dir=str(sim_repo), return_state=True)
    assert [r.status for r in again.result()] == ["skipped"]
    assert catalog.stat().st_mtime_ns == mtime
    assert (sim_repo / "dvc.lock").read_bytes() == lock_bytes
    assert "Stage 'simulate' didn't change, skipping" in _flow_run_logs(again.state_details.flow_run_id)


@pytest.mark.slow  # re-simulates and saves a DVC experiment: about 12 s on a loaded 2-core machine
def test_params_override_reruns_and_is_saved_as_experiment(simulated_repo):
    sim_repo = simulated_repo
    before = _lock_stage(sim_repo, "simulate")["outs"][0]["md5"]
    state = pipeline(target="simulate", overrides={"simulate.s2_dates": 3}, repo_dir=str(sim_repo), return_state=True)
    assert [r.status for r in state.result()] == ["ran"]
    assert load_params(sim_repo / "params.yaml").simulate.s2_dates == 3
    locked = _lock_stage(sim_repo, "simulate")
    assert locked["params"]["params.yaml"]["simulate"]["s2_dates"] == 3
    assert locked["outs"][0]["md5"] != before
    assert len(list((sim_repo / "data/source/sentinel-2-l2a").glob("s2_*"))) == 3
    with get_client(sync_client=True) as client:
        run_name = client.read_flow_run(state.state_details.flow_run_id).name
    assert run([*DVC, "exp", "list", "--name-only"], sim_repo).split() == [run_name]


_STEP = (
    'python -c "import sys, time, json, pathlib; s = time.time(); time.sleep(3); '
    'pathlib.Path(sys.argv[1]).write_text(json.dumps([s, time.time(), pathlib.Path(sys.argv[2]).read_text()]))"'
)


@pytest.fixture()
def diamond_repo(tmp_path) -> Path:
    """a -> (b, c) -> d: b and c depend only on a, so they may run at once; each step takes 3 s."""
    stages = {
        "a": {"cmd": "python -c \"import pathlib; pathlib.Path('a.txt').write_text('a')\"", "outs": ["a.txt"]},
        "b": {"cmd": f"{_STEP} b.json a.txt", "deps": ["a.txt"], "outs": ["b.json"]},
        "c": {"cmd": f"{_STEP} c.json a.txt", "deps": ["a.txt"], "outs": ["c.json"]},
        "d": {"cmd": f"{_STEP} d.json b.json", "deps": ["b.json", "c.json"], "outs": ["d.json"]},
    }
    return make_repo(tmp_path / "repo", {"stages": stages}, _tiny_params())


@pytest.mark.slow
def test_independent_stages_run_at_once_and_dvc_lock_is_as_dvc_repro_writes_it(diamond_repo, tmp_path):
    """concurrency=2: b and c overlap, d waits for both, and dvc.lock records what a shell `dvc repro` would:
    `dvc status` is clean afterwards, the second run skips every stage."""
    results = pipeline(repo_dir=str(diamond_repo), concurrency=2)
    assert [(r.stage, r.status) for r in results] == [("a", "ran"), ("b", "ran"), ("c", "ran"), ("d", "ran")]
    b, c, d = (json.loads((diamond_repo / f"{x}.json").read_text()) for x in "bcd")
    assert b[0] < c[1] and c[0] < b[1], f"b and c did not overlap: {b[:2]} {c[:2]}"
    assert d[0] >= max(b[1], c[1]), "d started before both of its dependencies finished"
    assert run([*DVC, "status", "--json"], diamond_repo).strip().endswith("{}")
    lock = yaml.safe_load((diamond_repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set("abcd") and lock["d"]["deps"][0]["path"] == "b.json"
    again = pipeline(repo_dir=str(diamond_repo), concurrency=2)
    assert {r.status for r in again} == {"skipped"}
    with pytest.raises(PipelineError, match="concurrency must be at least 1"):
        pipeline(repo_dir=str(diamond_repo), concurrency=0)


def test_bad_override_is_rejected_and_params_left_intact(sim_repo):
    original = (sim_repo / "params.yaml").read_text()
    for bad in ({"simulate.no_such_key": 1}, {"simulate.size_px": -5}):
        state = pipeline(target="simulate", overrides=bad, repo_dir=str(sim_repo), return_state=True)
        assert state.is_failed()
        with pytest.raises(PipelineError, match="rejected"):
            state.result()
        assert (sim_repo / "params.yaml").read_text() == original
    assert not (sim_repo / "dvc.lock").exists()


# --- retries: network stages yes, training stages no --------------------------------------------------

FLAKY = (
    "python -c \"import pathlib, sys; c = pathlib.Path('{out}.attempts'); "
    "n = int(c.read_text()) + 1 if c.exists() else 1; c.write_text(str(n)); print('attempt', n); "
    "sys.exit(1) if n < 2 else pathlib.Path('{out}').write_text('ok')\""
)


@pytest.fixture()
def flaky_repo(tmp_path) -> Path:
    """Stand-in stages that fail on their first attempt and succeed on the second."""
    stages = {
        "download": {"cmd": FLAKY.format(out="fetched.txt"), "outs": ["fetched.txt"]},
        "pretrain": {"cmd": FLAKY.format(out="model.txt"), "deps": ["fetched.txt"], "outs": ["model.txt"]},
    }
    return make_repo(tmp_path / "flaky", {"stages": stages}, _tiny_params())


def test_io_stage_retried_training_stage_not(flaky_repo):
    retry = RetryPolicy(io_stages=["download"], retries=2, backoff_s=0)
    state = pipeline(repo_dir=str(flaky_repo), retry=retry, return_state=True)
    assert state.is_failed()  # pretrain failed once and was not retried
    assert (flaky_repo / "fetched.txt").read_text() == "ok"  # download failed once, then its retry succeeded
    assert not (flaky_repo / "model.txt").exists()
    lock = yaml.safe_load((flaky_repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"download"}
    with pytest.raises(ValueError, match="never retried"):
        RetryPolicy(io_stages=["pretrain"])


# --- the retrain flow and its lock -------------------------------------------------------------------


def test_retrain_with_nothing_new_does_nothing(simulated_repo):
    from msgfm.ingest.download import download

    sim_repo = simulated_repo
    cwd = Path.cwd()
    os.chdir(sim_repo)
    try:
        params = load_params("params.yaml")
        download(params.source, params.download, report_path=None, progress=False)
    finally:
        os.chdir(cwd)
    assert new_acquisitions(sim_repo).new_ids == []
    lock_bytes = (sim_repo / "dvc.lock").read_bytes()

    state = retrain(repo_dir=str(sim_repo), return_state=True)
    assert state.is_completed()
    assert "no new acquisitions" in state.message
    assert state.result() == {"ran_pipeline": False, "reason": "nothing new"}
    assert (sim_repo / "dvc.lock").read_bytes() == lock_bytes


def test_two_concurrent_retrains_run_the_pipeline_once(sim_repo):
    """The first run (no ledger yet: it runs the pipeline) holds the lock; the second exits at once."""
    lock = RunLock(sim_repo / load_params(sim_repo / "params.yaml").retrain.lock_path)
    states = {}
    first = threading.Thread(target=lambda: states.update(first=retrain(repo_dir=str(sim_repo), return_state=True)))
    first.start()
    deadline = time.monotonic() + 60
    while not lock.holder() and time.monotonic() < deadline:
        time.sleep(0.1)
    holder = lock.holder()
    assert holder, "the first retrain never took the lock"
    second = retrain(repo_dir=str(sim_repo), lock_wait_s=0, return_state=True)
    first.join(timeout=300)

    assert second.name == "Skipped" and second.is_completed()
    assert holder["run"] in second.message and "did nothing" in second.message
    assert second.result()["ran_pipeline"] is False
    assert states["first"].result()["ran_pipeline"] is True
    assert states["first"].result()["stages_run"] == ["simulate"]
    assert "no evaluation stage yet" in states["first"].message
    assert lock.holder() is None  # released, holder record cleared


def test_lock_names_holder_across_processes_and_waits(tmp_path):
    path = tmp_path / "retrain.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from flows.lock import RunLock; import sys, time; l = RunLock({str(path)!r}, "
         "run='other-run'); l.acquire(); print('held', flush=True); time.sleep(float(sys.argv[1])); l.release()",
         "1.5"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockBusy, match=rf"pid {holder.pid} .*run other-run"):
        RunLock(path).acquire(timeout_s=0)
    waiting = RunLock(path, run="me")
    waiting.acquire(timeout_s=30)  # the holder releases after 1.5 s
    assert waiting.holder()["run"] == "me" and waiting.holder()["pid"] == os.getpid()
    waiting.release()
    assert holder.wait(timeout=30) == 0


# --- deployments ---------------------------------------------------------------------------------------


def test_deployments_schedule_comes_from_params(tmp_path):
    params = _tiny_params()
    params["retrain"] = {"cron": "15 4 * * 1", "timezone": "Europe/Berlin"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    by_name = {d.name: d for d in build_deployments(tmp_path / "params.yaml")}
    assert set(by_name) == {PIPELINE_DEPLOYMENT, RETRAIN_DEPLOYMENT}
    assert not by_name[PIPELINE_DEPLOYMENT].schedules
    [schedule] = by_name[RETRAIN_DEPLOYMENT].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 4 * * 1", "Europe/Berlin")
    assert by_name[RETRAIN_DEPLOYMENT].parameters == {"repo_dir": str(tmp_path)}
    ui_form = parameter_schema(pipeline).properties  # what to_deployment sends for the UI's Run form
    assert {"target", "stages", "overrides", "force", "retry"} <= set(ui_form)
    assert ui_form["overrides"]["description"].startswith("params.yaml overrides")
    retrain_form = parameter_schema(retrain).properties
    assert {"overrides", "lock_wait_s", "retry"} <= set(retrain_form)
    assert retrain_form["overrides"]["description"].startswith("params.yaml overrides for the challenger")


def test_prefect_yaml_matches_params_and_flows():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {PIPELINE_DEPLOYMENT, RETRAIN_DEPLOYMENT}
    cfg = load_params(REPO_ROOT / "params.yaml").retrain
    [schedule] = by_name[RETRAIN_DEPLOYMENT]["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == (cfg.cron, cfg.timezone)
    assert load_flow_from_entrypoint(by_name[PIPELINE_DEPLOYMENT]["entrypoint"]).name == "pipeline"
    assert load_flow_from_entrypoint(by_name[RETRAIN_DEPLOYMENT]["entrypoint"]).name == RETRAIN_DEPLOYMENT


def test_prefect_yaml_is_rendered_from_the_deployments():
    rendered = render_prefect_yaml(load_params(REPO_ROOT / "params.yaml").retrain)
    assert (REPO_ROOT / "prefect.yaml").read_text() == rendered, "stale prefect.yaml: run python -m flows.deployments"


def test_serve_refuses_bad_params_before_contacting_prefect(tmp_path):
    from typer.testing import CliRunner

    from flows.serve import app

    (tmp_path / "params.yaml").write_text("seed: -1\n")
    out = CliRunner().invoke(app, ["--params", str(tmp_path / "params.yaml")])
    assert out.exit_code == 2 and "error:" in out.output and "seed" in out.output


def test_registry_json_written_by_gate_when_metrics_exist(simulated_repo):
    """With evaluate metrics present the gate records a first champion, then refuses a worse challenger."""
    from flows.retrain import gate_challenger

    sim_repo = simulated_repo
    cfg = load_params(sim_repo / "params.yaml").retrain
    metrics = sim_repo / cfg.metrics_path
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps({"segmentation": {"mIoU": 0.60}, "cloud_removal": {"psnr": 30.0, "sam": 5.0}}))
    assert gate_challenger(str(sim_repo), cfg).startswith("promoted")
    metrics.write_text(json.dumps({"segmentation": {"mIoU": 0.50}, "cloud_removal": {"psnr": 31.0, "sam": 4.0}}))
    assert gate_challenger(str(sim_repo), cfg).startswith("not promoted")
    registry = json.loads((sim_repo / cfg.registry_path).read_text())
    assert registry["champion"]["metrics"]["segmentation"]["mIoU"] == 0.60
    assert [h["promoted"] for h in registry["history"]] == [True, False]
    lock_sha = registry["champion"]["dvc_lock_sha256"]
    assert (sim_repo / cfg.registry_path).parent.joinpath("locks", f"{lock_sha}.dvc.lock").is_file()


@pytest.mark.slow  # simulate + download twice through Prefect: about 40 s on a loaded 2-core machine
def test_retrain_downloads_only_the_new_acquisitions(tmp_path):
    """After the source publishes more (`msgfm simulate --until LATER`), retrain fetches just those."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    params = _tiny_params()
    params["simulate"]["until"] = "2024-06-01"
    repo = make_repo(tmp_path / "repo", {"stages": {k: stages[k] for k in ("simulate", "download")}}, params)
    assert [r.status for r in pipeline(repo_dir=str(repo))] == ["ran", "ran"]
    ledger_path = repo / "data" / "raw" / "acquisitions.parquet"
    first_ids = set(pd.read_parquet(ledger_path)["id"])
    fetched = {p: p.stat().st_mtime_ns for p in (repo / "data" / "raw").rglob("*.tif")}
    assert first_ids and fetched

    run(["msgfm", "simulate", "--until", "2024-10-31"], repo)  # the source publishes later acquisitions
    news = new_acquisitions(repo)
    assert news.new_ids and not set(news.new_ids) & first_ids

    state = retrain(repo_dir=str(repo), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["stages_run"] == ["download"]  # the publisher (simulate) is not re-run
    ledger = pd.read_parquet(ledger_path)
    assert set(ledger["id"]) == first_ids | set(news.new_ids)
    assert (ledger["status"] == "ok").all()
    assert {p: p.stat().st_mtime_ns for p in fetched} == fetched  # earlier downloads untouched
    assert new_acquisitions(repo).new_ids == []


# --- the whole retrain path: download through evaluate, then the champion/challenger gate ----------------

EARLY, LATER = "2024-08-01", "2024-10-31"  # the tiny world's last acquisitions (S1, Sep 4) come in between


@pytest.fixture(scope="module")
def champion_repo(tmp_path_factory) -> Path:
    """The project's whole dvc.yaml after a first retrain (no ledger: every stage ran, its model is champion);
    then the source publishes the acquisitions up to LATER, which nothing has downloaded yet."""
    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    repo = make_repo(tmp_path_factory.mktemp("champion") / "repo", dvc_yaml, whole_pipeline_params(REPO_ROOT, EARLY))
    state = retrain(repo_dir=str(repo), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["stages_run"] == plan_stages(repo)  # first run: every stage of dvc.yaml
    registry = json.loads((repo / "data/models/registry.json").read_text())
    assert [h["promoted"] for h in registry["history"]] == [True]
    assert "no champion yet" in registry["history"][0]["reason"]
    run(["msgfm", "simulate", "--until", LATER], repo)
    return repo


@pytest.fixture()
def news_repo(champion_repo, tmp_path) -> Path:
    """A copy of the champion repository (without Ray's checkpoints, which no later stage reads)."""
    dest = tmp_path / "repo"
    shutil.copytree(champion_repo, dest, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def _registry(repo: Path) -> dict:
    return json.loads((repo / "data/models/registry.json").read_text())


def _assert_decision_follows_the_table(entry: dict, champion: dict, challenger: dict, tolerance: float) -> None:
    """The history entry compares every champion metric with the challenger's, and decides by the table alone:
    a gated (primary) metric is acceptable unless its gain interval lies below zero (tolerance without one)."""
    rows = {(r["task"], r["metric"]): r for r in entry["comparison"]}
    assert {(t, m) for t, table in champion.items() for m in table if m not in EVIDENCE_KEYS} <= set(rows)
    for (task, metric), row in rows.items():
        assert row["champion"] == champion.get(task, {}).get(metric)
        assert row["challenger"] == challenger[task][metric]
        if row["champion"] is not None and row["gated"]:
            if row["gain_ci"] is not None:
                assert row["acceptable"] == (row["gain_ci"][1] >= 0)
            else:
                assert row["acceptable"] == (row["relative_change"] >= -tolerance)
        elif row["champion"] is not None:
            assert row["acceptable"]
    assert entry["promoted"] == all(r["acceptable"] for r in rows.values())
    assert entry["metrics"] == challenger


@pytest.mark.slow  # the fixture runs all 14 stages (5-10 min on a loaded 2-core machine), the test 4.5-5.5 min more
def test_retrain_runs_download_through_evaluate_and_records_the_decision(champion_repo, news_repo):
    repo = news_repo
    before = _registry(repo)
    ledger_path = repo / "data/raw/acquisitions.parquet"
    first_ids = set(pd.read_parquet(ledger_path)["id"])
    fetched = {p: p.stat().st_mtime_ns for p in (repo / "data/raw").rglob("*.tif")}
    news = new_acquisitions(repo)
    assert news.new_ids and not set(news.new_ids) & first_ids

    state = retrain(repo_dir=str(repo), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["new_ids"] == news.new_ids
    assert result["stages_run"] == plan_stages(repo, downstream_of=["download"])  # download ... evaluate
    assert result["stages_run"][-1] == "evaluate" and "simulate" not in result["stages_run"]

    ledger = pd.read_parquet(ledger_path)  # only the new items were downloaded, the earlier ones left alone
    assert set(ledger["id"]) == first_ids | set(news.new_ids) and (ledger["status"] == "ok").all()
    report = json.loads((repo / "data/reports/download.json").read_text())
    assert (report["items"], report["fetched"], report["skipped"]) == (len(ledger), len(news.new_ids), len(first_ids))
    assert {p: p.stat().st_mtime_ns for p in fetched} == fetched

    registry = _registry(repo)
    cfg = load_params(repo / "params.yaml").retrain
    assert registry["history"][0] == before["history"][0]
    [entry] = registry["history"][1:]
    evaluated = json.loads((repo / cfg.metrics_path).read_text())
    _assert_decision_follows_the_table(entry, before["champion"]["metrics"], evaluated, cfg.tolerance)
    assert entry["dvc_lock_sha256"] == sha256_file(repo / "dvc.lock") != before["champion"]["dvc_lock_sha256"]
    assert (repo / "data/models/locks" / f"{entry['dvc_lock_sha256']}.dvc.lock").read_bytes() == (
        repo / "dvc.lock"
    ).read_bytes()
    assert registry["champion"]["model_id"] == (entry if entry["promoted"] else before["champion"])["model_id"]
    assert ("promoted: " if entry["promoted"] else "not promoted: ") + entry["reason"] in state.message


@pytest.mark.slow  # shares champion_repo with the test above; one more whole-pipeline run
def test_worse_challenger_is_not_promoted(champion_repo, news_repo):
    """A challenger fine-tuned with a learning rate of 1e-9 (heads left as initialised) stays a challenger."""
    repo = news_repo
    before = _registry(repo)
    state = retrain(repo_dir=str(repo), overrides={"finetune.lr_range": "[1e-9,1e-9]"}, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["stages_run"][-1] == "evaluate"
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["finetune@segmentation"]
    # the challenger used them (DVC writes "1e-09", which PyYAML's YAML 1.1 reads as a string; pydantic as a float)
    assert [float(v) for v in locked["params"]["params.yaml"]["finetune"]["lr_range"]] == [1e-9, 1e-9]
    assert load_params(repo / "params.yaml").finetune.lr_range == (1e-9, 1e-9)

    registry = _registry(repo)
    cfg = load_params(repo / "params.yaml").retrain
    assert registry["champion"] == before["champion"]
    assert registry["history"][:-1] == before["history"]
    entry = registry["history"][-1]
    assert entry["promoted"] is False
    evaluated = json.loads((repo / cfg.metrics_path).read_text())
    _assert_decision_follows_the_table(entry, before["champion"]["metrics"], evaluated, cfg.tolerance)
    worse = [f"{r['task']}.{r['metric']}" for r in entry["comparison"] if not r["acceptable"]]
    assert worse and entry["reason"].startswith("worse than the champion beyond the interval on")
    assert all(name in entry["reason"] for name in worse)
    assert "not promoted: " + entry["reason"] in state.message
