"""Save and load msGFM models as safetensors weights plus a config.json; loading never unpickles.

A pretrained model directory holds:

- ``model.safetensors``: the state dict (tensors only, no code).
- ``config.json``: ``format``/``format_version``, the model config (MSGFMConfig.to_dict), the sensors
  with their band names and the normalisation stats the model was trained with, the code version
  (msgfm, torch, timm), the weights' SHA-256 and any ``extra`` the caller adds (params hash, metrics).

`load_pretrained(path)` rebuilds the model from config.json and loads the weights strictly.
`save_weights`/`load_weights` do the same for any module (fine-tuned task models) with the caller's config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from torch import nn

import msgfm
from msgfm.architectures import MSGFMConfig
from msgfm.geo.io import atomic_path, atomic_write_json, sha256_file
from msgfm.models.msgfm import MSGFM
from msgfm.sensors import get_sensor

log = logging.getLogger(__name__)

FORMAT = "msgfm-pretrained"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def sensor_card(sensor: str) -> dict[str, Any]:
    """The registry facts a checkpoint must remember about one sensor: bands and normalisation stats."""
    s = get_sensor(sensor)
    return {
        "title": s.title,
        "bands": [{"name": b.name, "mean": b.mean, "std": b.std, "gsd_m": b.gsd_m} for b in s.bands],
    }


def save_weights(module: nn.Module, path: str | Path) -> str:
    """Write a module's state dict as safetensors, atomically; return the file's SHA-256."""
    with atomic_path(path, suffix=".safetensors") as tmp:
        safetensors.torch.save_model(module, str(tmp))
    return sha256_file(path)


def load_weights(module: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load safetensors weights into `module` strictly; errors name the file and the mismatching keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        missing, unexpected = safetensors.torch.load_model(module, str(path), strict=False, device=str(device))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{path}: cannot load weights into {type(module).__name__}: {e}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the model: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return module


def save_pretrained(model: MSGFM, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write model.safetensors and config.json into `directory` (weights first, config last, both atomic)."""
    directory = Path(directory)
    digest = save_weights(model, directory / WEIGHTS_FILE)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "MSGFM",
        "model": model.config.to_dict(),
        "sensors": {s: sensor_card(s) for s in model.config.sensors},
        "code_version": {"msgfm": msgfm.__version__, "torch": torch.__version__, "timm": timm.__version__},
        "weights_sha256": digest,
        "extra": dict(extra or {}),
    }
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check a pretrained model's config.json; errors name the file."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an msGFM model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {config.get('format')!r} v{config.get('format_version')} is not "
            f"{FORMAT!r} v{FORMAT_VERSION}"
        )
    return config


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> MSGFM:
    """Rebuild the model saved in `directory` by save_pretrained and load its weights (no unpickling)."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model_config = MSGFMConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{directory / CONFIG_FILE}: bad model config: {e}") from None
    for sensor, card in config.get("sensors", {}).items():
        if card != sensor_card(sensor):
            log.warning("%s: sensor %r bands or normalisation stats differ from msgfm.sensors", directory, sensor)
    model = MSGFM(model_config)
    load_weights(model, directory / WEIGHTS_FILE, device=device)
    return model.to(device).eval()
