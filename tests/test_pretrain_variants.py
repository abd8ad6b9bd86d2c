"""Pretraining variants (issue 14 item 4): params.yaml's pretrain_variants, as msgfm and DVC read them."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo
from typer.testing import CliRunner

from msgfm.cli import app
from msgfm.config import ParamsError, load_params
from msgfm.models.finetuned import model_dir, variant_sensors
from msgfm.training.pretrain import build_model, run_name

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, edit) -> Path:
    """params.yaml edited by `edit(raw)`, written to tmp_path."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_each_variant_changes_only_its_term_and_writes_its_own_outputs(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    single, no_cross, dense = (params.pretrain_variant(n) for n in ("single_s2", "no_cross", "dense"))
    assert single.pretrain.sensors == ["s2"] and single.pretrain.sensor_mix == {"s2": 1.0}
    for variant in (single, no_cross, dense):  # a Ray Train worker validates the variant's params again
        assert type(params).model_validate(variant.model_dump()) == variant
    assert build_model(single).config.sensors == ("s2",)
    assert (no_cross.model.p_cross, no_cross.model.experts, no_cross.pretrain.sensors) == (
        0.0,
        4,
        params.pretrain.sensors,
    )
    assert (dense.model.experts, dense.model.p_cross) == (0, params.model.p_cross)
    assert build_model(dense).config.experts == 0
    assert no_cross.pretrain.model_dump(exclude={"out_dir", "checkpoint_dir", "metrics", "plots_dir"}) == (
        params.pretrain.model_dump(exclude={"out_dir", "checkpoint_dir", "metrics", "plots_dir"})
    )
    assert no_cross.pretrain.out_dir == Path("data/models/pretrain_variants/no_cross") == model_dir(params, "no_cross")
    assert no_cross.pretrain.metrics == Path("data/metrics/pretrain_no_cross.json")
    assert no_cross.pretrain.plots_dir == Path("data/plots/pretrain_no_cross")
    assert no_cross.pretrain.checkpoint_dir == Path("data/checkpoints/pretrain_no_cross")
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"chips")
    names = {run_name(p, manifest) for p in (params, single, no_cross, dense)}
    assert len(names) == 4  # no two variants resume from one another's checkpoints
    assert variant_sensors(params, "single_s2") == ("s2",) and variant_sensors(params, "scratch") == (
        "s1", "s2", "rgb", "dsm"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["pretrain_variants"].update(run=["single_s2", "nope"]), "must name distinct variants"),
        (lambda r: r["finetune"].update(variants=["pretrained", "nope"]), "finetune.variants must be distinct names"),
        (lambda r: r["pretrain_variants"]["define"]["dense"].update(model={"expertz": 0}), "define.dense: expertz"),
        (lambda r: r["pretrain_variants"]["define"]["dense"].update(model={"experts": -1}), "define.dense"),
        (lambda r: r["pretrain_variants"]["define"].update(scratch={"claim": "x"}), "lower_snake_case and not"),
        (lambda r: r["pretrain_variants"]["define"]["no_cross"].pop("claim"), "no_cross.claim"),
    ],
)
def test_a_bad_variant_is_an_error_naming_the_key(tmp_path: Path, edit, message: str) -> None:
    path = _write(tmp_path, edit)
    with pytest.raises(ParamsError, match=r"params\.yaml") as e:
        load_params(path)
    assert message in str(e.value)


def test_pretrain_refuses_an_unknown_variant(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["pretrain", "--variant", "nope", "--params", str(REPO / "params.yaml")])
    assert out.exit_code == 2 and "unknown pretraining variant 'nope'" in out.output and "single_s2" in out.output


def _stages(tmp_path: Path, params: dict) -> list[str]:
    """The stage names DVC expands from the project's dvc.yaml with `params` as params.yaml."""
    tmp_path.mkdir()
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        return [s.name for s in repo.index.stages]


def test_the_params_choose_which_variants_dvc_runs(tmp_path: Path) -> None:
    """Default: single_s2 only (the pipeline keeps its time); the study profile adds no_cross and dense."""
    spec = importlib.util.spec_from_file_location("study_overrides", REPO / "scripts/study_overrides.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    base, overlay = (yaml.safe_load((REPO / n).read_text()) for n in ("params.yaml", "params-study.yaml"))
    default = [s for s in _stages(tmp_path / "default", base) if s.startswith("pretrain_variant")]
    assert default == ["pretrain_variant@single_s2"]
    merged = study.merge(base, overlay)
    stages = [s for s in _stages(tmp_path / "study", merged) if s.startswith("pretrain_variant")]
    assert stages == [f"pretrain_variant@{n}" for n in ("single_s2", "no_cross", "dense")]
    assert merged["finetune"]["variants"] == ["pretrained", "scratch", "single_s2", "no_cross", "dense"]
