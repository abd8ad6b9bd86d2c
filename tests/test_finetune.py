"""Fine-tuning and evaluation on the tiny world: tasks, label budget, Optuna resume, missing modality, outputs.

The encoder here is a freshly initialised msGFM saved with save_pretrained (no MIM pretraining): these
tests check the fine-tuning and evaluation machinery, not whether pretraining helps, so they skip the
~30 s Ray start a real pretraining run costs. tests/test_pretrain.py covers real pretraining.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny_world import working_directory
from typer.testing import CliRunner

from msgfm.cli import app
from msgfm.config import load_params
from msgfm.datasets.pansharpen import wald_pansharpening_input
from msgfm.datasets.task_chips import accepted_chips, build_task_data, nearest_in_time
from msgfm.datasets.tasks import IGNORE_INDEX, PAN_BANDS, TASKS, get_task, label_budget
from msgfm.evaluation.ablations import CLOUD_VALUE, add_cloud, drop_sensor, misregister
from msgfm.evaluation.evaluate import load_finetuned
from msgfm.evaluation.report import render_report
from msgfm.evaluation.scoring import ABSENT_KEY, TRIVIAL, evidence, score
from msgfm.inference.predict import predict
from msgfm.landcover import SHORT_NAMES
from msgfm.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC
from msgfm.models import create_model_from_params
from msgfm.models.finetuned import BEST_FILE, checkpoint_mismatch, load_encoder, model_dir, variant_missing
from msgfm.models.heads import build_task_model
from msgfm.models.hub import save_pretrained
from msgfm.sensors import get_sensor
from msgfm.training.finetune import finetune_task_data, tune_variant
from msgfm.training.study import finished_trials, open_study, study_fingerprint

FAST = {
    "label_fraction": 1.0,
    "trials": 1,
    "epochs": 1,
    "min_steps_per_epoch": 1,
    "batch_sizes": [8],
    "holdout_aois": [],
    "train_until": None,
    "threads": 1,
    "variants": ["pretrained", "scratch", "single_s2"],
}


@pytest.fixture(scope="module")
def project(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny world with fast finetune params and an untrained msGFM saved as the pretrained model."""
    dest = tmp_path_factory.mktemp("finetune") / "p"
    shutil.copytree(tiny_world, dest, ignore=shutil.ignore_patterns("checkpoints", "models", "metrics", "plots"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["finetune"] = FAST
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with working_directory(dest):
        p = load_params("params.yaml")
        torch.manual_seed(0)
        save_pretrained(create_model_from_params(p.model), p.finetune.pretrained_model)
    return dest


def test_label_budget_is_exact_seeded_and_without_replacement() -> None:
    picks = label_budget(100, 0.1, seed=3)
    assert len(picks) == 10 and len(set(picks.tolist())) == 10 and list(picks) == sorted(picks)
    assert np.array_equal(picks, label_budget(100, 0.1, seed=3))
    assert not np.array_equal(picks, label_budget(100, 0.1, seed=4))
    assert len(label_budget(7, 0.1, seed=0)) == 1  # never an empty training set
    assert np.array_equal(label_budget(5, 1.0, seed=0), np.arange(5))
    with pytest.raises(ValueError, match="label fraction"):
        label_budget(10, 0.0, seed=0)


def test_wald_input_of_a_flat_image_is_the_image() -> None:
    """A flat image has no detail to lose: degraded, upsampled and sharpened it comes back unchanged."""
    flat = torch.full((1, 4, 32, 32), 0.2)
    assert torch.allclose(wald_pansharpening_input(flat), flat, atol=1e-6)
    ramp = torch.linspace(0, 1, 32).repeat(1, 4, 32, 1)
    ramp = ramp + torch.sin(torch.arange(32.0))[None, None, :, None]  # detail below the 4 px block scale
    fused = wald_pansharpening_input(ramp)
    ms_up = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(ramp, 4), size=(32, 32), mode="bicubic")
    assert (fused - ramp).abs().mean() < (ms_up - ramp).abs().mean()  # PAN detail brings it closer


def test_nearest_s1_is_closest_in_time_within_max_days_and_absent_beyond() -> None:
    place = {"aoi": "a", "grid": "s10", "row": 0, "col": 0}
    rows = pd.DataFrame(
        [
            {**place, "sensor": "s1", "day": dt.date(2024, 3, 1), "store_index": 7},
            {**place, "sensor": "s1", "day": dt.date(2024, 3, 9), "store_index": 8},
            {**place, "col": 32, "sensor": "s1", "day": dt.date(2024, 3, 10), "store_index": 9},
        ]
    )
    anchors = pd.DataFrame([{**place, "day": dt.date(2024, 3, 8)}, {**place, "day": dt.date(2024, 6, 1)}])
    assert nearest_in_time(rows, anchors, "s1", 10).tolist() == [8, -1]  # the other place's S1 never counts
    assert nearest_in_time(rows, anchors.iloc[1:], "s1", 10).tolist() == [-1]  # no match at all


def test_tasks_are_built_from_the_accepted_chips(project: Path) -> None:
    with working_directory(project):
        params = load_params("params.yaml")
        store, rows = accepted_chips(params)
        datas = {t: build_task_data(params, t, loaded=(store, rows)) for t in TASKS}
    cls = datas["classification"]
    train = cls.splits["train"]
    assert train.images["s2"].shape[1:] == (12, 32, 32) and train.images["s1"].shape[1:] == (2, 32, 32)
    by_id = rows.set_index("id")
    for i, chip in enumerate(train.ids):  # the multi-hot target is the manifest's class list
        expected = {int(c) for c in by_id.at[chip, "labels"]} & set(cls.class_codes)
        assert {cls.class_codes[k] for k in np.flatnonzero(train.target[i].numpy())} == expected
        assert by_id.at[chip, "cloud_fraction"] <= params.finetune.max_cloud_fraction
    assert bool(train.present["s1"].all()) == (by_id.loc[train.ids, "partner_sensor"] == "s1").all()
    cr = datas["cloud_removal"].splits["train"]
    for chip in cr.ids:  # cloudy input, and its target is clear and later at the same place
        assert by_id.at[chip, "cloud_fraction"] > params.finetune.max_cloud_fraction
    cloudy = rows[rows["id"].isin(cr.ids)]
    assert len(cloudy) == len(cr) and cr.target.shape == cr.images["s2"].shape
    # S1 is the chip at the same place closest in time to the cloudy date (within pair.max_days), as in
    # SEN12MS-CR, not the S1 that pairing gave to the clear date after it
    s1 = rows[rows["sensor"] == "s1"]
    for i, chip in enumerate(cr.ids):
        here = s1[(s1["aoi"] == by_id.at[chip, "aoi"]) & (s1["row"] == by_id.at[chip, "row"])]
        here = here[here["col"] == by_id.at[chip, "col"]]
        days = (pd.to_datetime(here["day"]) - pd.Timestamp(by_id.at[chip, "day"])).dt.days.abs()
        near = here[days <= params.pair.max_days]
        assert bool(cr.present["s1"][i]) == (not near.empty)
        if not near.empty:
            closest = near.iloc[int(np.argmin(days[days <= params.pair.max_days].to_numpy()))]
            expected = store.read("s1", [int(closest["store_index"])])[0]
            assert torch.equal(cr.images["s1"][i], torch.from_numpy(expected))
    assert cr.present["s1"].any()
    ps = datas["pansharpening"].splits["train"]
    assert ps.bands["s2"] == PAN_BANDS and ps.target.shape[1] == 4
    seg = datas["segmentation"]
    target = seg.splits["train"].target
    assert target.dtype == torch.int64 and set(target.unique().tolist()) <= set(range(seg.num_classes)) | {IGNORE_INDEX}
    assert seg.splits["train"].bands == {"rgb": ("R", "G", "B"), "dsm": ("height",)}


def test_holdout_aois_and_later_dates_stay_out_of_training(project: Path) -> None:
    with working_directory(project):
        params = load_params("params.yaml")
        params.finetune.holdout_aois = ["harbour"]
        params.finetune.train_until = pd.Timestamp("2024-07-12").date()
        data = build_task_data(params, "classification")
        store, rows = accepted_chips(params)
    day = rows.set_index("id")["day"]
    aoi = rows.set_index("id")["aoi"]
    split = rows.set_index("id")["split"]
    place = rows.set_index("id")[["aoi", "grid", "row", "col"]].apply(tuple, axis=1)
    for name in ("train", "val", "test"):
        ids = data.splits[name].ids if name in data.splits else []
        assert all(aoi[i] != "harbour" and str(day[i]) <= "2024-07-12" for i in ids)
    assert data.splits["holdout_aoi"].ids and all(aoi[i] == "harbour" for i in data.splits["holdout_aoi"].ids)
    later = data.splits["later"].ids
    assert later and all(str(day[i]) > "2024-07-12" for i in later)
    # later dates come from val/test places only: a train place seen again under its static labels is no test
    train_places = set(place[rows.loc[rows["split"] == "train", "id"]])
    assert all(split[i] in ("val", "test") and place[i] not in train_places for i in later)
    assert len(later) < (rows.loc[rows["sensor"] == "s2", "day"] > dt.date(2024, 7, 12)).sum()  # fewer than before


def test_classes_absent_from_training_are_listed_per_set(project: Path) -> None:
    """The held-out AOI's classes that training lacks are counted, not silently dropped (issue 15 item 5)."""
    with working_directory(project):
        params = load_params("params.yaml")
        params.finetune.holdout_aois = ["harbour"]
        datas = {t: build_task_data(params, t) for t in ("classification", "segmentation", "pansharpening")}
        store, rows = accepted_chips(params)
        seg_rows = rows.set_index("id").loc[datas["segmentation"].splits["holdout_aoi"].ids]
        pixels = store.labels("fine", seg_rows["label_index"].tolist())
    labels = rows.set_index("id")["labels"]
    cls = datas["classification"]
    held = cls.splits["holdout_aoi"].ids
    expected = {}
    for code in sorted({int(c) for i in held for c in labels[i]} - set(cls.class_codes)):
        chips = sum(code in set(labels[i]) for i in held)
        expected[str(code)] = {"class": SHORT_NAMES[code], "chips": chips, "share": round(chips / len(held), 4)}
    assert cls.absent["holdout_aoi"] == expected
    seg = datas["segmentation"]
    unseen = sorted(set(np.unique(pixels).tolist()) - set(seg.class_codes) - {0})
    assert sorted(int(c) for c in seg.absent["holdout_aoi"]) == unseen
    for code in unseen:
        assert seg.absent["holdout_aoi"][str(code)]["pixels"] == int((pixels == code).sum())
    assert expected or unseen  # the tiny world's harbour has classes farmland lacks
    assert datas["pansharpening"].absent == {}


def test_corruptions_change_exactly_what_they_say(project: Path) -> None:
    with working_directory(project):
        split = build_task_data(load_params("params.yaml"), "segmentation").splits["test"]
    dropped = drop_sensor(split, "dsm")
    assert not dropped.present["dsm"].any() and (dropped.images["dsm"] == 0).all()
    assert torch.equal(dropped.images["rgb"], split.images["rgb"]) and split.present["dsm"].any()
    shifted = misregister(split, "rgb", 3)
    assert torch.equal(shifted.images["rgb"][..., 3:, 3:], split.images["rgb"][..., :-3, :-3])
    clouded = add_cloud(split, "rgb", 0.25, seed=0)
    cloud = get_sensor("rgb").normalise(np.full((3, 1, 1), CLOUD_VALUE["rgb"], np.float32), ("R", "G", "B"))
    covered = (clouded.images["rgb"] == torch.from_numpy(cloud)).all(dim=1).sum(dim=(1, 2))
    assert (covered >= 16 * 16).all()  # a 16 x 16 square of a 32 px chip: 25 %


def test_missing_modality_runs_on_the_sensors_present(project: Path) -> None:
    with working_directory(project):
        params = load_params("params.yaml")
        data = build_task_data(params, "classification")
        model = build_task_model(get_task("classification"), load_encoder(params, "pretrained", 0), data.num_classes)
    test = data.splits["test"]
    both = predict(model, test, 8)
    only_s2 = predict(model, drop_sensor(test, "s1"), 8)
    assert both.shape == only_s2.shape == (len(test), data.num_classes) and torch.isfinite(only_s2).all()
    assert not torch.allclose(both, only_s2)  # the S1 features really left the average
    images, present, _ = drop_sensor(test, "s1").batch(torch.arange(len(test)))
    assert set(images) == {"s2"}  # a sensor absent from every sample is not fed to the encoder at all


def test_optuna_study_resumes_after_an_interruption(project: Path) -> None:
    """A kill leaves a RUNNING trial and maybe a checkpoint of an unfinished trial; the rerun fixes both."""
    from optuna.trial import TrialState

    with working_directory(project):
        params = load_params("params.yaml")
        data = build_task_data(params, "pansharpening")
        first = tune_variant(params, data, "pretrained")
        assert first["trials_finished"] == 1
        study = open_study(params, data, "pretrained")
        study.ask()  # what a process killed mid-trial leaves behind
        best_path = project / params.finetune.out_dir / "pansharpening" / "pretrained" / BEST_FILE
        record = json.loads(best_path.read_text())
        best_path.write_text(json.dumps({**record, "trial": 99}))  # a checkpoint of a trial that never finished
        params.finetune.trials = 3
        second = tune_variant(params, data, "pretrained")
        study = open_study(params, data, "pretrained")
        # the same inputs resume this study; changed chips (or code that builds them otherwise) start a new one
        again = build_task_data(params, "pansharpening")
        assert study_fingerprint(params, again, "pretrained") == study_fingerprint(params, data, "pretrained")
        again.splits["train"].images["s2"][0, 0, 0, 0] += 1.0
        assert study_fingerprint(params, again, "pretrained") != study_fingerprint(params, data, "pretrained")
    assert second["trials_finished"] == finished_trials(study) == 3
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 1 and states[0] == TrialState.COMPLETE
    saved = json.loads(best_path.read_text())
    assert saved["trial"] == study.best_trial.number and saved["metric"] == "PSNR"
    assert (best_path.parent / "model.safetensors").is_file()


@pytest.mark.slow
def test_trials_run_in_parallel_on_ray_workers_sharing_a_journal(project: Path) -> None:
    """finetune.trial_workers=2: trials of one study run as Ray tasks on a real local instance, sharing a
    journal file; the budget and the best-trial checkpoint are as in the sequential path (about 60 s)."""
    import os

    with working_directory(project):
        params = load_params("params.yaml")
        params.finetune.trial_workers, params.finetune.trials, params.ray.num_cpus = 2, 4, 2
        params.finetune.threads = 1
        data = build_task_data(params, "pansharpening")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the workers: the driver's retrained best trial then repeats their numbers
        try:
            summary = tune_variant(params, data, "pretrained")
        finally:
            torch.set_num_threads(threads)
        study = open_study(params, data, "pretrained")
    out = project / params.finetune.out_dir / "pansharpening"
    assert (out / "optuna.journal").is_file() and not (out / "optuna.db").exists()
    assert summary["trials_finished"] == finished_trials(study) == 4
    workers = {t.user_attrs["worker"] for t in study.get_trials(deepcopy=False)}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers), workers
    saved = json.loads((out / "pretrained" / BEST_FILE).read_text())
    assert saved["trial"] == study.best_trial.number == summary["trial"]
    assert saved["value"] == pytest.approx(study.best_value)  # the driver retrained the best trial: same seed
    assert checkpoint_mismatch(out / "pretrained") is None


def _cli(project: Path, *args: str) -> tuple[int, str]:
    with working_directory(project):
        result = CliRunner().invoke(app, [*args, "--params", "params.yaml"])
    return result.exit_code, result.output + (repr(result.exception) if result.exit_code else "")


def test_bad_inputs_are_clear_errors(project: Path) -> None:
    code, out = _cli(project, "finetune", "--task", "regression")
    assert code == 2 and "--task must be one of" in out
    code, out = _cli(project, "finetune", "--benchmark", "bigearthnet")
    assert code == 2 and "--root" in out
    code, out = _cli(project, "finetune", "--benchmark", "nope", "--root", str(project))
    assert code == 1 and "unknown benchmark 'nope'" in out


def test_benchmark_finetune_on_real_bigearthnet_samples(project: Path, test_data: Path) -> None:
    """The real BigEarthNet v1.0 sample patches (tests/data/bigearthnet-v1) through `msgfm finetune --benchmark`."""
    code, out = _cli(
        project, "finetune", "--benchmark", "bigearthnet", "--root", str(test_data / "bigearthnet-v1"), "--variant",
        "pretrained",
    )  # fmt: skip
    assert code == 0, out
    summary = json.loads((project / "data/models/benchmarks/bigearthnet/classification.json").read_text())
    assert summary["pretrained"]["metric"] == "mAP_micro" and 0 <= summary["pretrained"]["value"] <= 1
    assert summary["input_px"] == [120, 120] and summary["samples"] == {"train": 2, "val": 1, "test": 1}
    assert summary["test"]["pretrained"]["n"] == summary["test"]["class_prior"]["n"] == {"samples": 1}
    assert "verdict" in summary["test"]["pretrained vs class_prior"]


def test_spacenet_pansharpening_fine_tunes_on_the_added_worldview_sensors(project: Path, test_data: Path) -> None:
    """SpaceNet PAN/MS (tests/data/spacenet) through `msgfm finetune --benchmark`: the encoder grows WorldView
    embeddings, and the test tiles score the model against HPF and bicubic with n and intervals."""
    code, out = _cli(
        project, "finetune", "--benchmark", "spacenet_pansharpen", "--root", str(test_data / "spacenet"), "--variant",
        "pretrained", "--variant", "scratch",
    )  # fmt: skip
    assert code == 0, out
    folder = project / "data/models/benchmarks/spacenet_pansharpen"
    summary = json.loads((folder / "pansharpening.json").read_text())
    assert summary["pretrained"]["inputs"] == ["wv_pan", "wv_ms"] and summary["pretrained"]["train_samples"] == 12
    assert summary["input_px"] == [16, 16] and summary["samples"] == {"train": 12, "val": 3, "test": 3}
    best = json.loads((folder / "pansharpening/pretrained" / BEST_FILE).read_text())
    assert best["encoder_config"]["sensors"] == ["s1", "s2", "rgb", "dsm", "wv_pan", "wv_ms"]
    test = summary["test"]
    for name in ("hpf", "bicubic", "pretrained", "scratch"):
        assert test[name]["n"] == {"samples": 3}, name
        lo, hi = test[name]["ci"]["PSNR"]
        assert lo <= test[name]["PSNR"] <= hi, name
    # the PAN's detail is injected: HPF beats plain bicubic upsampling by far on this fixture (its PAN is the
    # mean of the visible bands), and the residual head starts from HPF
    assert test["hpf"]["PSNR"] > test["bicubic"]["PSNR"] + 0.5
    assert abs(test["pretrained"]["PSNR"] - test["hpf"]["PSNR"]) < 1.0
    assert test["pretrained vs bicubic"]["verdict"] == "held"
    assert set(test["pretrained vs hpf"]) >= {"gain", "ci", "verdict"}


def _sen12mscr_root(test_data: Path, root: Path) -> Path:
    """The real SEN12MS-CR triplet (fall scene 139, a test scene) copied as a train (14) and a val scene (65) too."""
    shutil.copytree(test_data / "sen12ms-cr", root)
    for scene in (14, 65):
        for kind in ("s1", "s2", "s2_cloudy"):
            src = root / f"ROIs1970_fall_{kind}" / f"{kind}_139" / f"ROIs1970_fall_{kind}_139_p839.tif"
            dst = root / f"ROIs1970_fall_{kind}" / f"{kind}_{scene}" / f"ROIs1970_fall_{kind}_{scene}_p839.tif"
            dst.parent.mkdir()
            shutil.copy(src, dst)
    return root


def test_benchmark_finetune_on_real_sen12mscr_at_256px_with_loader_workers(
    project: Path, test_data: Path, tmp_path: Path
) -> None:
    """The real SEN12MS-CR triplet through `msgfm finetune --benchmark sen12ms_cr` at its native 256 px, the
    samples streamed by two DataLoader workers."""
    root = _sen12mscr_root(test_data, tmp_path / "sen12ms-cr")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["loader_workers"] = 2
    (project / "params_workers.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with working_directory(project):
        args = ["finetune", "--benchmark", "sen12ms_cr", "--root", str(root), "--variant", "scratch"]
        result = CliRunner().invoke(app, [*args, "--params", "params_workers.yaml"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((project / "data/models/benchmarks/sen12ms_cr/cloud_removal.json").read_text())
    assert summary["input_px"] == [256, 256] and summary["loader_workers"] == 2
    assert summary["samples"] == {"train": 1, "val": 1, "test": 1}
    assert summary["scratch"]["metric"] == "MAE" and 0 < summary["scratch"]["value"] < 1  # reflectance 0..1
    assert summary["scratch"]["inputs"] == ["s1", "s2"]
    # the test scene is scored through the same two workers, against the cloudy input itself
    assert summary["test"]["scratch"]["n"] == summary["test"]["input"]["n"] == {"samples": 1}
    assert 0 < summary["test"]["input"]["MAE"] < 1 and "verdict" in summary["test"]["scratch vs input"]


def test_report_states_the_claims_from_the_intervals() -> None:
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    n = {"chips": 24, "positions": 8, "blocks": 2, "unit": "position"}
    baselines = {
        "pretrained": {"classification": {"mAP_micro": 0.8, "n": n, "ci": {"mAP_micro": [0.7, 0.9]}},
                       "cloud_removal": {"MAE": 0.05}},
        "scratch": {"classification": {"mAP_micro": 0.6}, "cloud_removal": {"MAE": 0.04}},
        "single_s2": {**{t: {"missing": "no model"} for t in TASKS},
                      "segmentation": {"not applicable": "segmentation needs ['rgb', 'dsm']"}},
        "no_cross": {"classification": {"mAP_micro": 0.7}, "segmentation": {"mIoU": 0.3}},
        "class_prior": {"classification": {"mAP_micro": 0.85}},
    }  # fmt: skip
    comparisons = {
        "classification": {
            "pretrained vs scratch": {"metric": "mAP_micro", "gain": 0.2, "ci": [0.05, 0.3], "verdict": "held"},
            "pretrained vs class_prior": {"metric": "mAP_micro", "gain": -0.05, "ci": [-0.1, 0.02],
                                          "verdict": "inconclusive"},
            "pretrained vs no_cross": {"metric": "mAP_micro", "gain": 0.1, "ci": [0.02, 0.2], "verdict": "held"},
        },
        "cloud_removal": {
            "pretrained vs scratch": {"metric": "MAE", "gain": -0.01, "ci": [-0.02, 0.005], "verdict": "inconclusive"}
        },
        "pansharpening": {
            "pretrained vs scratch": {"metric": "PSNR", "gain": 0.0, "ci": [0.0, 0.0], "verdict": "no difference",
                                      "reason": "identical per-chip scores: the two models predict the same"},
        },
    }  # fmt: skip
    baselines["pretrained"]["pansharpening"] = baselines["scratch"]["pansharpening"] = {"PSNR": 40.788}
    snow = {"70": {"class": "snow", "chips": 6, "share": 0.25}}
    generalisation = {"classification": {"test": {"mAP_micro": 0.8, ABSENT_KEY: {}},
                                         "holdout_aoi": {"mAP_micro": 0.5, ABSENT_KEY: snow}}}  # fmt: skip
    params.finetune.variants = ["pretrained", "scratch", "single_s2", "no_cross"]
    text = render_report(params, baselines, {}, generalisation, {}, comparisons)
    assert "- classification, held-out AOIs: snow (70): 6 chips, 25.0% of the set" in text
    assert "classification, test set" not in text  # nothing absent there
    assert "- none: every class" in render_report(params, baselines, {}, {}, {}, comparisons)
    summary = "HELD on 1 of 3 tasks (1 inconclusive, 1 no difference)"
    assert f"Pretraining helps at 10% labels (pretrained beats scratch): {summary}" in text
    assert "classification: held: 0.8000 vs 0.6000 (mAP_micro, max is better), gain +0.2000 [+0.0500, +0.3000]" in text
    assert "cloud_removal: inconclusive: 0.0500 vs 0.0400" in text
    same = "gain +0.0000 [+0.0000, +0.0000] (identical per-chip scores: the two models predict the same)"
    assert f"pansharpening: no difference: 40.7880 vs 40.7880 (PSNR, max is better), {same}" in text
    assert "minimum meaningful difference (mAP_micro 0.01, mIoU 0.01, MAE 0.002, PSNR 0.1)" in text
    single = "Cross-sensor pretraining beats single-sensor (S2) pretraining (pretrained beats `single_s2`)"
    assert f"{single}: NOT TESTED (baseline missing or not applicable)" in text
    assert "  - segmentation: not applicable: segmentation needs ['rgb', 'dsm']" in text
    assert "  - classification: not tested: missing: no model" in text
    assert "| single_s2 | segmentation | | not applicable: segmentation needs ['rgb', 'dsm'] |" in text
    no_cross = "The cross-sensor reconstruction term helps (p_cross 0.5 vs 0) (pretrained beats `no_cross`)"
    assert f"{no_cross}: HELD on 1 of 1 tasks (0 inconclusive, 0 no difference)" in text
    assert "dense" not in text  # defined, but not a variant of finetune.variants
    top = text.split("## Claims on this run")[0]
    assert "classification: the fine-tuned msGFM does not beat the trivial `class_prior` baseline" in top
    assert "| pretrained | classification | 24 / 8 / 2 |  |  | 0.8000 [0.7000, 0.9000] |" in text  # MAE, PSNR empty
    assert "segmentation: the fine-tuned" not in top  # nothing compared there


def test_fine_tuning_seeds_are_trained_once_and_averaged_with_seed_intervals(project: Path) -> None:
    """finetune.seeds (issue 15 item 1): each offset retrains the best trial's hyperparameters with another seed,
    once; evaluation's entry is the mean over seeds with n.seeds and a seed x unit interval."""
    with working_directory(project):
        params = load_params("params.yaml")
        params.finetune.seeds = [0, 1]
        params.finetune.out_dir = Path("data/models_seeds")  # its own studies: the other tests' stay as they are
        data = finetune_task_data(params, "classification")
        summary = tune_variant(params, data, "pretrained")
        out = params.finetune.out_dir / "classification" / "pretrained"
        best, extra = (json.loads((d / BEST_FILE).read_text()) for d in (out, out / "seed_1"))
        assert set(summary["seeds"]) == {"0", "1"} and summary["seeds"]["0"] == summary["value"] == best["value"]
        assert extra["seed"] == 1 and (extra["trial"], extra["params"]) == (best["trial"], best["params"])
        assert extra["sha256"] != best["sha256"]  # another seed trains other weights
        stamp = (out / "seed_1" / "model.safetensors").stat().st_mtime_ns
        assert tune_variant(params, data, "pretrained")["seeds"] == summary["seeds"]  # resumed: nothing retrained
        assert (out / "seed_1" / "model.safetensors").stat().st_mtime_ns == stamp
        models = [load_finetuned(params, "classification", "pretrained", s)[0] for s in params.finetune.seeds]
        _, rows = accepted_chips(params)
    test = data.splits["train"]  # the tiny world's test set is one position: no interval; train has many
    runs = [score(m, data, test, 8) for m in models]
    ev = evidence(params, rows, test)
    record = ev.record(runs)
    assert record["n"]["seeds"] == 2 and ev.draws.weights.shape[1] == 2 * len(test)
    assert record["mAP_micro"] == pytest.approx(np.mean([float(r.metrics["mAP_micro"]) for r in runs]), abs=1e-6)
    lo, hi = record["ci"]["mAP_micro"]
    assert record["n"]["positions"] >= 2, record["n"]  # else there is no interval to check
    assert lo <= record["mAP_micro"] <= hi
    same = ev.compare(runs, runs, "classification")
    assert same.gain.value == 0 and same.verdict == "no difference" and "identical" in same.reason
    with pytest.raises(ValueError, match="3 scored runs for 2"):
        ev.record(runs + runs[:1])


def test_the_single_sensor_variant_is_built_and_fed_with_its_sensor_only(project: Path) -> None:
    """Issue 14: the single-sensor variant has no (untrained) embeddings of the other sensors, fine-tuning
    and evaluation feed it only the inputs it was pretrained on, and a task it has no input for is not applicable."""
    from msgfm.training.pretrain import build_model

    with working_directory(project):
        params = load_params("params.yaml")
        baseline = build_model(params.pretrain_variant("single_s2"))
        assert baseline.config.sensors == ("s2",)
        assert set(baseline.encoder.patch_embed) == set(baseline.decoders) == {"s2"}
        assert build_model(params).config.sensors == ("s1", "s2", "rgb", "dsm")
        folder = model_dir(params, "single_s2")
        assert folder == params.pretrain_variants.models_dir / "single_s2"
        assert "dvc repro pretrain_variant@single_s2" in variant_missing(params, "single_s2")
        save_pretrained(baseline, folder)
        assert variant_missing(params, "single_s2") is None
        data = build_task_data(params, "classification")
        only = data.only(("s2",))
        assert only.spec.inputs == ("s2",) and all(set(sp.images) == {"s2"} for sp in only.splits.values())
        assert only.splits["test"].ids == data.splits["test"].ids  # the same chips: paired comparisons hold
        assert "['s1'] left out" in only.notes["inputs"]
        seg = build_task_data(params, "segmentation")
        assert "pretrained on ['s2'] only" in seg.only(("s2",))
        summary = tune_variant(params, data, "single_s2")
        assert summary["inputs"] == ["s2"] and summary["trials_finished"] == params.finetune.trials
        assert "pretrained on ['s2'] only" in tune_variant(params, seg, "single_s2")["not applicable"]
        model, best = load_finetuned(params, "classification", "single_s2")  # evaluation rebuilds it as saved
        assert model.encoder.sensors == ("s2",) and best["variant"] == "single_s2"
        shutil.rmtree(folder)
        shutil.rmtree(params.finetune.out_dir / "classification" / "single_s2")
        shutil.rmtree(params.finetune.out_dir / "segmentation" / "single_s2", ignore_errors=True)


def test_finetune_and_evaluate_write_every_output(project: Path) -> None:
    for task in TASKS:
        code, out = _cli(project, "finetune", "--task", task, "--variant", "pretrained", "--variant", "scratch")
        assert code == 0, out
        summary = json.loads((project / f"data/metrics/finetune/{task}.json").read_text())
        assert summary["pretrained"]["metric"] == PRIMARY_METRIC[task] and summary["scratch"]["trials_finished"] == 1
    code, out = _cli(project, "evaluate")
    assert code == 0, out
    metrics = json.loads((project / "data/metrics/evaluate.json").read_text())
    assert set(metrics) == set(TASKS)
    for task, values in metrics.items():  # the retrain gate's shape: {task: {metric: value, n, ci}}
        scalars = {k: v for k, v in values.items() if k not in ("n", "ci", ABSENT_KEY)}
        assert PRIMARY_METRIC[task] in values and set(scalars) <= set(METRIC_DIRECTIONS)
        assert all(math.isfinite(v) for v in scalars.values())
        assert values["n"]["chips"] >= values["n"]["positions"] >= values["n"]["blocks"] >= 1
        lo, hi = values["ci"][PRIMARY_METRIC[task]]
        assert values["n"]["positions"] < 2 or lo <= values[PRIMARY_METRIC[task]] <= hi
        assert isinstance(values.get(ABSENT_KEY), dict) == (task in ("classification", "segmentation"))
    baselines = json.loads((project / "data/metrics/baselines.json").read_text())
    assert baselines["pretrained"] == metrics and set(baselines["scratch"]) == set(TASKS)
    assert baselines["hpf"]["pansharpening"]["PSNR"] > baselines["bicubic"]["pansharpening"]["PSNR"] > 0
    assert set(baselines["input"]) == {"cloud_removal"} and set(baselines["majority_class"]) == {"segmentation"}
    assert 0 < baselines["class_prior"]["classification"]["mAP_micro"] <= 1
    comparisons = json.loads((project / "data/metrics/comparisons.json").read_text())
    for task in TASKS:
        assert {"pretrained vs scratch", *(f"pretrained vs {t}" for t in TRIVIAL[task])} <= set(comparisons[task])
        verdicts = ("held", "did not hold", "no difference", "inconclusive")
        single = comparisons[task].pop("pretrained vs single_s2")  # not fine-tuned here: no verdict
        assert single == baselines["single_s2"][task]
        assert all(c["verdict"] in verdicts and c["reason"] for c in comparisons[task].values())
    assert "pretrained on ['s2'] only" in baselines["single_s2"]["segmentation"]["not applicable"]
    assert all("no fine-tuned checkpoint" in baselines["single_s2"][t]["missing"] for t in TASKS if t != "segmentation")
    ablations = json.loads((project / "data/metrics/ablations.json").read_text())
    assert {"clean", "drop_s1", "noise_s2", "shift_s1", "cloud_s2"} <= set(ablations["classification"])
    assert ablations["classification"]["clean"] == metrics["classification"]
    assert "n/a" in ablations["pansharpening"]["drop_s2"] and "drop_dsm" in ablations["segmentation"]
    generalisation = json.loads((project / "data/metrics/generalisation.json").read_text())
    assert generalisation["segmentation"]["test"] == metrics["segmentation"]
    assert "n/a" in generalisation["segmentation"]["holdout_aoi"]  # no held-out AOI in this params
    plots = project / "data/plots/evaluate"
    for name in ("confusion.png", "iou_per_class.png", "cloud_removal_examples.png", "pansharpening_examples.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(pd.read_csv(plots / "confusion.csv").columns) == {"actual", "predicted"}
    assert len(pd.read_csv(plots / "optuna_segmentation.csv")) == 2  # one trial of each of two variants
    report = (project / "data/reports/report.md").read_text()
    for task in TASKS:  # the verdict printed for each task is the interval's
        metric = PRIMARY_METRIC[task]
        a, b = baselines["pretrained"][task][metric], baselines["scratch"][task][metric]
        verdict = comparisons[task]["pretrained vs scratch"]["verdict"]
        assert f"  - {task}: {verdict}: {a:.4f} vs {b:.4f}" in report
