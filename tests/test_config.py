from pathlib import Path

import pytest
import yaml

from msgfm.config import ParamsError, load_params


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture()
def default_params(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_repo_params_validate(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    assert params.seed == 0
    assert len(params.simulate.aois) >= 4
    assert len({a.biome for a in params.simulate.aois}) >= 4


def test_unknown_key_names_key_and_allowed(tmp_path: Path, default_params: dict) -> None:
    default_params["simulate"]["size_pixels"] = 10
    with pytest.raises(ParamsError) as e:
        load_params(_write(tmp_path, default_params))
    msg = str(e.value)
    assert "simulate.size_pixels" in msg
    assert "size_px" in msg  # the allowed keys are listed


def test_out_of_range_names_key(tmp_path: Path, default_params: dict) -> None:
    default_params["simulate"]["cloudy_fraction"] = 1.5
    with pytest.raises(ParamsError) as e:
        load_params(_write(tmp_path, default_params))
    assert "simulate.cloudy_fraction" in str(e.value)
    assert "1.5" in str(e.value)


def test_bad_literal_lists_allowed_values(tmp_path: Path, default_params: dict) -> None:
    default_params["simulate"]["aois"][0]["biome"] = "jungle"
    with pytest.raises(ParamsError) as e:
        load_params(_write(tmp_path, default_params))
    msg = str(e.value)
    assert "simulate.aois.0.biome" in msg and "temperate_farmland" in msg


def test_unknown_top_level_section(tmp_path: Path, default_params: dict) -> None:
    default_params["simulat"] = {}
    with pytest.raises(ParamsError, match="simulat: unknown key"):
        load_params(_write(tmp_path, default_params))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_model_chip_px_must_equal_pair_chip_px(tmp_path: Path, default_params: dict) -> None:
    default_params["pair"]["chip_px"] = 32
    with pytest.raises(ParamsError) as e:
        load_params(_write(tmp_path, default_params))
    msg = str(e.value)
    assert "model.chip_px (64) must equal pair.chip_px (32)" in msg
    default_params["model"]["chip_px"] = 32
    assert load_params(_write(tmp_path, default_params)).model.chip_px == 32


def test_model_section_is_checked_against_the_model_rules(tmp_path: Path, default_params: dict) -> None:
    default_params["model"]["experts"] = 1
    with pytest.raises(ParamsError, match=r"model\.experts 1 must be 0 \(dense\) or >= 2"):
        load_params(_write(tmp_path, default_params))
    default_params["model"].update(experts=4, name="msgfm_huge")
    with pytest.raises(ParamsError, match=r"model\.name: .*unknown msGFM model; registered models are msgfm_base"):
        load_params(_write(tmp_path, default_params))


def test_model_decoder_must_be_a_registered_design(tmp_path: Path, default_params: dict) -> None:
    default_params["model"]["decoder"] = "mlp"
    with pytest.raises(ParamsError, match=r"model\.decoder 'mlp' is not a design; known are \['unet', 'linear'\]"):
        load_params(_write(tmp_path, default_params))
    default_params["model"]["decoder"] = "linear"
    assert load_params(_write(tmp_path, default_params)).model.to_model_config().decoder == "linear"
