"""The model in users' hands: huggingface_hub's save/load, `msgfm.models.load`, timm's registry and layer decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import timm.optim
import torch

import msgfm.models as mm
from msgfm.models.heads import TaskModel
from msgfm.models.hub import read_config
from msgfm.sensors import get_sensor
from msgfm.training.loop import Hyper, param_groups


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[mm.MSGFM, Path]:
    torch.manual_seed(0)
    model = mm.create_model("msgfm_tiny").eval()
    directory = tmp_path_factory.mktemp("hub") / "msgfm-tiny"
    model.save_pretrained(directory)
    return model, directory


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_hub_mixin_writes_our_layout_and_loads_it_back(saved) -> None:
    model, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = read_config(directory)  # our format, not the mixin's dataclass dump
    assert config["model"]["name"] == "msgfm_tiny" and "s2" in config["sensors"]
    assert "msgfm" in (directory / "README.md").read_text()  # the mixin's model card, library name set
    for loaded in (mm.MSGFM.from_pretrained(directory), mm.load(directory)):
        assert isinstance(loaded, mm.MSGFM) and not loaded.training
        assert _same_weights(model, loaded)


def test_only_local_directories_load(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="msgfm downloads nothing"):
        mm.MSGFM.from_pretrained("someone/msgfm-tiny")
    with pytest.raises(FileNotFoundError, match="not an msGFM model directory"):
        mm.load(tmp_path)


def test_timm_builds_a_pretrained_backbone_by_name(saved) -> None:
    model, directory = saved
    assert {"msgfm_tiny", "msgfm_base"} <= set(timm.list_models("msgfm*"))
    net = timm.create_model("msgfm_tiny", pretrained=True, pretrained_cfg_overlay={"file": str(directory)})
    assert _same_weights(model.encoder, net.encoder)
    s2 = get_sensor("s2")
    assert net.pretrained_cfg["bands"] == list(s2.band_names)
    assert net.pretrained_cfg["mean"] == pytest.approx([b.mean for b in s2.bands])
    x = torch.randn(2, len(s2.band_names), 64, 64, generator=torch.Generator().manual_seed(1))
    net.eval()
    with torch.no_grad():
        want = model.encoder({"s2": x}, {"s2": s2.band_names}).features["s2"]
        pooled = net(x)
    assert pooled.shape == (2, 384) and torch.allclose(pooled, want[-1].mean(dim=(2, 3)), atol=1e-6)

    maps = timm.create_model("msgfm_tiny", sensor="s1", features_only=True, out_indices=(1, 3))
    out = maps(torch.randn(1, 2, 64, 64))
    assert [f.shape[1] for f in out] == [i["num_chs"] for i in maps.feature_info] == [96, 384]
    assert [64 // f.shape[-1] for f in out] == [i["reduction"] for i in maps.feature_info] == [8, 32]
    assert timm.create_model("msgfm_tiny", num_classes=7)(torch.randn(1, 13, 64, 64)).shape == (1, 7)


def test_timm_pretrained_needs_a_local_file_and_the_right_architecture(saved) -> None:
    _, directory = saved
    with pytest.raises(ValueError, match="downloads nothing"):
        timm.create_model("msgfm_tiny", pretrained=True)
    with pytest.raises(ValueError, match="holds a msgfm_tiny model, not msgfm_base"):
        timm.create_model("msgfm_base", pretrained=True, pretrained_cfg_overlay={"file": str(directory)})


def test_layer_decay_comes_from_the_group_matcher() -> None:
    """Fine-tuning's AdamW groups (timm's layer decay over group_matcher): head at lr, stage i of n at
    lr * d^(n - i) with the final norm in the last stage, embeddings at lr * d^(n + 1); no decay on 1-d."""
    encoder = mm.create_model("msgfm_tiny").encoder
    model = TaskModel(encoder, torch.nn.Linear(384, 5))
    lr, decay, n = 1e-3, 0.5, len(encoder.stages)
    got = {
        id(p): (g["lr"], g["weight_decay"])
        for g in param_groups(model, Hyper(lr, 0.05, decay, False, 8))
        for p in g["params"]
    }

    def want_scale(name: str) -> float:
        if name.startswith(("patch_embed", "mask_token", "sensor_embed")):
            return decay ** (n + 1)
        if name.startswith(("stages.", "downsample.")):
            return decay ** (n - int(name.split(".")[1]))
        assert name.startswith("norm"), name
        return decay

    for name, p in encoder.named_parameters():
        assert got[id(p)] == (pytest.approx(lr * want_scale(name)), 0.05 if p.ndim > 1 else 0.0), name
    for p in model.head.parameters():
        assert got[id(p)] == (pytest.approx(lr), 0.05 if p.ndim > 1 else 0.0)
    frozen = param_groups(model, Hyper(lr, 0.05, decay, True, 8))
    assert {id(p) for g in frozen for p in g["params"]} == {id(p) for p in model.head.parameters()}

    net = timm.create_model("msgfm_tiny", num_classes=3)
    scales = sorted({g["lr_scale"] for g in timm.optim.create_optimizer_v2(net, "adamw", layer_decay=0.5).param_groups})
    assert scales == pytest.approx([0.5**k for k in range(n + 1, -1, -1)])
    json.dumps(net.pretrained_cfg)  # plain JSON, as timm's pretrained_cfg is


def test_devices_resolve_and_a_missing_gpu_is_a_clear_error(repo_root: Path) -> None:
    import subprocess
    import sys

    from msgfm.models.device import resolve_device, to_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_device("tpu")
    batch = to_device(({"s2": torch.ones(1)}, ("B02",), [torch.zeros(2)]), torch.device("cpu"))
    assert batch[1] == ("B02",) and torch.equal(batch[0]["s2"], torch.ones(1))
    if torch.cuda.is_available():
        return
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")
    for command in (["finetune", "--task", "classification"], ["evaluate"]):
        run = subprocess.run(
            [sys.executable, "-m", "msgfm.cli", *command, "--device", "cuda"],
            cwd=repo_root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2 and "torch sees no CUDA GPU" in run.stderr, run.stderr[-500:]


def test_gpu_smoke_script_runs_and_reports_json(repo_root: Path) -> None:
    """benchmarks/gpu_smoke.py is run where a GPU is lent; here it must at least run on the CPU, small."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks/gpu_smoke.py"), "--device", "cpu", "--model", "msgfm_tiny",
         "--samples", "16", "--batch", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["device"] == "cpu" and result["bf16_autocast"] is False and result["samples"] == 16
    assert result["finetune_samples_per_s"] > 0 and result["embed_chips_per_s"] > 0
    assert result["finetune_vs_bare"] > 0 and 0 <= result["val_mAP_micro"] <= 1
