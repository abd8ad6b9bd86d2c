"""Pretraining on a real local Ray cluster: learning, outputs, resume after a kill, joining a cluster."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny_world import working_directory

from msgfm.config import ParamsError, load_params
from msgfm.datasets.pretrain import PretrainDataError, load_pretrain_chips, pretrain_loader, step_rng
from msgfm.models.hub import load_pretrained
from msgfm.training.checkpoints import latest_checkpoint, write_checkpoint
from msgfm.training.pretrain import PretrainError, build_model, run_pretrain, train_loop
from msgfm.training.schedule import cosine_schedule

MSGFM = str(Path(sys.executable).with_name("msgfm"))


def _project(tiny_world: Path, dest: Path, **pretrain: object) -> Path:
    """A copy of the tiny world's project (data included) with pretrain params overridden."""
    shutil.copytree(tiny_world, dest, ignore=shutil.ignore_patterns("checkpoints", "models", "metrics", "plots"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["pretrain"].update(pretrain)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def _closed_form(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """The hand-written schedule timm's replaced: warmup (step + 1) / warmup, then cosine decay to min_ratio."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _lrs(groups: list[float], steps: int, warmup: int, min_ratio: float, start: int = 0) -> list[list[float]]:
    """The lr of every group at each update from `start`, as the training loops step the schedule."""
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in groups])
    scheduler = cosine_schedule(optimizer, steps, warmup, min_ratio, start=start)
    out = []
    for _ in range(start, steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_lr_schedule_is_timms_cosine_and_matches_the_closed_form() -> None:
    """Pretraining's schedule (warmup 20, floor 0.05 of lr, 150 steps): the cosine part equals the closed form,
    warmup updates are at most 1/warmup of the peak lower; fine-tuning's layer-decay groups (no warmup, floor 0)
    follow it exactly, each from its own lr; a resumed schedule continues the uninterrupted one."""
    lr, steps, warmup, floor = 2e-3, 150, 20, 0.05
    got = [g[0] / lr for g in _lrs([lr], steps, warmup, floor)]
    want = [_closed_form(s, steps, warmup, floor) for s in range(steps)]
    gaps = [w - g for g, w in zip(got, want, strict=True)]
    assert 0 <= max(gaps[:warmup]) <= 1 / warmup and got[0] == pytest.approx(want[0])
    assert max(abs(d) for d in gaps[warmup:]) < 1e-12
    assert got[warmup] == pytest.approx(1.0) and got[-1] == pytest.approx(floor, abs=0.001)
    assert all(a >= b for a, b in zip(got[warmup:], got[warmup + 1 :], strict=False))

    groups = [1e-3, 5e-4, 2.5e-4]  # lr * layer_decay^k
    tuned = _lrs(groups, 30, 0, 0.0)
    for s, row in enumerate(tuned):
        assert row == pytest.approx([g * _closed_form(s, 30, 0, 0.0) for g in groups], rel=1e-12, abs=1e-15)
    resumed = [row[0] for row in _lrs([lr], steps, warmup, floor, start=70)]
    assert resumed == pytest.approx([row[0] for row in _lrs([lr], steps, warmup, floor)[70:]], rel=1e-12)
    with pytest.raises(ValueError, match="needs one lr for every param group"):
        _lrs(groups, 30, 5, 0.0)


def test_model_initialisation_is_seeded(repo_root: Path) -> None:
    """Every rank and every run of the same params start from the same weights; another seed from others."""
    params = load_params(repo_root / "params.yaml")
    first = build_model(params).state_dict()
    torch.rand(100)  # the process's random state moves on between the builds: the seed alone decides
    again = build_model(params).state_dict()
    other = build_model(params.model_copy(update={"seed": params.seed + 1})).state_dict()
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resume_skips_a_checkpoint_cut_off_mid_copy(repo_root: Path, tmp_path: Path) -> None:
    """Ray copies a checkpoint file by file: a kill mid-copy leaves state.json beside a truncated model.
    Resume takes the newest checkpoint whose files match the sizes and hashes state.json recorded."""
    params = load_params(repo_root / "params.yaml")
    model = build_model(params)
    optimizer = torch.optim.AdamW(model.parameters())
    run = tmp_path / "run"
    for step in (4, 8, 12):
        ckpt = run / f"checkpoint_{step:03d}"
        ckpt.mkdir(parents=True)
        write_checkpoint(ckpt, model, optimizer, {"step": step, "history": []})
    assert latest_checkpoint(run) == run / "checkpoint_012"
    newest = run / "checkpoint_012" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut off mid-copy
    assert latest_checkpoint(run) == run / "checkpoint_008"
    middle = run / "checkpoint_008" / "optimizer.pt"
    data = bytearray(middle.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    middle.write_bytes(bytes(data))
    assert latest_checkpoint(run) == run / "checkpoint_004"
    (run / "checkpoint_004" / "state.json").write_text('{"step": 4, "hist')  # state.json itself cut off
    assert latest_checkpoint(run) is None


def test_single_sensor_outputs_are_written_from_its_own_checkpoint(tiny_world: Path, tmp_path: Path) -> None:
    """The variant's checkpoint holds S2's embedding and decoder only; the stage's outputs load it as such."""
    from msgfm.training.pretrain import write_outputs

    project = _project(tiny_world, tmp_path / "p")
    with working_directory(project):
        params = load_params("params.yaml").pretrain_variant("single_s2")
        model = build_model(params)
        assert model.config.sensors == ("s2",)
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        losses = {"step": 1, "lr": 1e-4, "total": 1.0, "mim/s2": 1.0}
        state = {"step": 1, "history": [losses], "samples_per_s": 1.0}
        write_checkpoint(ckpt, model, torch.optim.AdamW(model.parameters()), state)
        metrics = write_outputs(params, ckpt, wall_s=1.0)
        assert set(metrics["val"]["terms"]) == {"mim/s2"}
        assert load_pretrained(params.pretrain.out_dir).config.sensors == ("s2",)


def _local_pretrain_loss(params, storage: Path) -> float:
    """The last reported loss of a short pretraining in this process (Ray Train's local mode: no cluster)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"params": params.model_dump(mode="json"), "resume_from": None},
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name="local", storage_path=str(storage)),
    )
    return trainer.fit().metrics["loss"]


def test_same_params_pretrain_the_same_model(tiny_world: Path, tmp_path: Path) -> None:
    with working_directory(tiny_world):
        params = load_params("params.yaml")
        short = params.pretrain.model_copy(update={"steps": 4, "checkpoint_every": 4, "log_every": 2})
        params = params.model_copy(update={"pretrain": short})
        first, again = _local_pretrain_loss(params, tmp_path), _local_pretrain_loss(params, tmp_path)
        other = _local_pretrain_loss(params.model_copy(update={"seed": params.seed + 1}), tmp_path)
    assert first == again and other != first


def test_batches_mix_sensors_and_keep_pairs_aligned(tiny_world: Path) -> None:
    with working_directory(tiny_world):
        params = load_params("params.yaml")
        chips = load_pretrain_chips(params, "train")
        batch = chips.sample_batch(np.random.default_rng(0), 32, augment=True)
        again = chips.sample_batch(np.random.default_rng(0), 32, augment=True)
    assert set(batch["images"]) == {"s1", "s2", "rgb", "dsm"}
    assert sum(x.shape[0] for x in batch["images"].values()) in (32, 33)
    for sensor, x in batch["images"].items():
        assert x.shape[1:] == (len(batch["bands"][sensor]), 32, 32) and torch.isfinite(x).all()
        assert torch.equal(x, again["images"][sensor])  # same seed, same batch (resume replays exactly)
    # every S1 chip in this world has an accepted S2 partner, and the partner index points at it
    s1_partner = batch["partner"]["s1"]
    assert (s1_partner >= 0).all() and int(s1_partner.max()) < batch["images"]["s2"].shape[0]


def test_held_out_aois_stay_out_of_pretraining(tiny_world: Path) -> None:
    """finetune.holdout_aois are left out of pretraining by default, every split (issue 15 item 5)."""
    manifest = pd.read_parquet(tiny_world / "data/manifest.parquet")
    with_val = set(manifest.loc[manifest["split"] == "val", "aoi"])
    kept = sorted(with_val)[0]  # an AOI with val chips stays, so pretraining can still validate
    held = sorted(set(manifest["aoi"]) - {kept})
    with working_directory(tiny_world):
        params = load_params("params.yaml")
        params.finetune.holdout_aois = held
        for split in ("train", "val"):
            aois = set(load_pretrain_chips(params, split).rows["aoi"])
            assert aois == {kept}, split
        params.pretrain.exclude_holdout_aois = False
        assert set(load_pretrain_chips(params, "train").rows["aoi"]) == {"farmland", "harbour"}
        params.pretrain.exclude_holdout_aois = True
        params.finetune.holdout_aois = ["farmland", "harbour"]
        with pytest.raises(PretrainDataError, match="outside the held-out AOIs"):
            load_pretrain_chips(params, "train")


def test_the_batch_feed_gives_each_steps_seeded_batch_with_any_workers(tiny_world: Path) -> None:
    """pretrain_loader: batch `step` is the one drawn with step_rng(seed, rank, step), whether read in the training
    process or by two DataLoader workers, and a resumed feed (start 3) continues the uninterrupted one."""
    with working_directory(tiny_world):
        params = load_params("params.yaml")
        short = params.pretrain.model_copy(update={"steps": 6, "batch_size": 8})
        chips = load_pretrain_chips(params, "train")
        want = [chips.sample_batch(step_rng(params.seed, 1, step), 8, augment=True) for step in range(6)]
        inline = list(pretrain_loader(chips, params.model_copy(update={"pretrain": short}), rank=1))
        two = params.model_copy(update={"pretrain": short.model_copy(update={"loader_workers": 2})})
        workers = list(pretrain_loader(chips, two, rank=1))
        resumed = list(pretrain_loader(chips, two, rank=1, start=3))
    assert len(inline) == len(workers) == 6 and len(resumed) == 3
    for expected, *got in zip(want, inline, workers, [None, None, None, *resumed], strict=True):
        for batch in got:
            if batch is None:
                continue
            assert batch["images"].keys() == expected["images"].keys()
            assert all(torch.equal(batch["images"][s], expected["images"][s]) for s in expected["images"])
            assert all(torch.equal(batch["partner"][s], expected["partner"][s]) for s in expected["partner"])
    assert not torch.equal(want[0]["images"]["s2"][:1], want[1]["images"]["s2"][:1])  # steps differ


def test_single_sensor_pretraining_has_no_partners(tiny_world: Path) -> None:
    with working_directory(tiny_world):
        params = load_params("params.yaml")
        params = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"sensors": ["s2"]})})
        batch = load_pretrain_chips(params, "train").sample_batch(np.random.default_rng(1), 8)
    assert set(batch["images"]) == {"s2"}
    assert all((p < 0).all() for p in batch["partner"].values())


def test_pretrain_on_local_ray_learns_and_writes_outputs(tiny_world: Path, tmp_path: Path, capfd) -> None:
    project = _project(tiny_world, tmp_path / "p", steps=40, checkpoint_every=20, log_every=5, lr=0.002)
    with working_directory(project):
        params = load_params("params.yaml")
        metrics = run_pretrain(params)
    # the Train controller's first resource request times out on a busy machine and Ray retries it;
    # msgfm.cluster.quiet keeps that traceback off a healthy run's output
    assert "Failed to send resource request" not in capfd.readouterr().err
    assert metrics["steps"] == 40 and metrics["workers"] == 2
    saved = json.loads((project / "data/metrics/pretrain.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    # the loss falls: the last logged window against the first
    curve = pd.read_csv(project / "data/plots/pretrain/live/plots/metrics/train/total.tsv", sep="\t")
    assert list(curve["step"]) == list(range(5, 41, 5))
    assert curve["total"].iloc[-1] < 0.8 * curve["total"].iloc[0]
    assert {"mim/s1", "mim/s2", "mim/rgb", "mim/dsm"} <= set(metrics["val"]["terms"])
    assert any(k.startswith("cross/") for k in metrics["val"]["terms"])
    joint = params.model.cross_design == "joint"  # a joint cross term's target pixels around it are input: idw too
    for key, term in metrics["val"]["terms"].items():  # every term beside its baselines
        assert term["chip_mean_baseline"] > 0
        assert term["ratio_chip_mean"] == pytest.approx(term["model"] / term["chip_mean_baseline"], abs=1e-3)
        assert ("idw_baseline" in term) == (key.startswith("mim/") or joint)
    # the model is loadable without code and reproduces the trained weights
    model = load_pretrained(project / "data/models/pretrain")
    assert model.config.chip_px == 32
    png = project / "data/plots/pretrain/reconstructions.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_worker_counts_are_clear_errors(tiny_world: Path, tmp_path: Path) -> None:
    project = _project(tiny_world, tmp_path / "p", workers=0)
    with pytest.raises(ParamsError, match="pretrain.workers"):
        load_params(project / "params.yaml")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"]["workers"] = (os.cpu_count() or 1) + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with working_directory(project), pytest.raises(PretrainError, match="pretrain.workers=.*CPUs"):
        run_pretrain(load_params("params.yaml"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pretrain_joins_a_cluster_and_resumes_after_kill(tiny_world: Path, tmp_path: Path) -> None:
    """`ray start --head` by the test; msgfm pretrain joins it via ray.address, is killed mid-run, resumes."""
    port = _free_port()
    project = _project(tiny_world, tmp_path / "p", steps=24, checkpoint_every=4, log_every=4)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ray"]["address"] = f"127.0.0.1:{port}"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ray = str(Path(sys.executable).with_name("ray"))
    token = tmp_path / "ray_auth_token"  # the cluster's own token: Ray 2.60 authenticates every client
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=180,
    )  # fmt: skip
    try:
        ckpt_root = project / "data/checkpoints/pretrain"
        first = subprocess.Popen(
            [MSGFM, "pretrain"], cwd=project, env=env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 240

        def complete() -> list[Path]:  # whole checkpoints only: the kill may land while Ray copies the next
            return [c for run in ckpt_root.glob("*") if (c := latest_checkpoint(run)) is not None]

        while not complete() and first.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.5)
        assert first.poll() is None, f"pretrain ended before it could be killed:\n{first.communicate()[0]}"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = max(json.loads((c / "state.json").read_text())["step"] for c in complete())
        assert 0 < killed_at < 24
        second = subprocess.run([MSGFM, "pretrain"], cwd=project, env=env, capture_output=True, text=True, timeout=400)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
        assert "resuming from step" in out
        resumed_from = int(out.split("resuming from step ")[1].split("/")[0])
        assert resumed_from >= killed_at
        metrics = json.loads((project / "data/metrics/pretrain.json").read_text())
        assert metrics["steps"] == 24
        load_pretrained(project / "data/models/pretrain")
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
