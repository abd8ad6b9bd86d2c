"""Pretraining checkpoints: write one, restore one, and find the newest whole one of a run.

Ray Train copies a reported checkpoint into its storage file by file, so a kill mid-copy leaves a
directory with state.json beside a truncated model. state.json therefore records each file's size and
SHA-256, and resume takes the newest checkpoint whose files match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt")


def _fingerprint(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a checkpoint file, recorded in state.json so a resume can tell a whole copy."""
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _complete(ckpt: Path, files: dict[str, Any]) -> bool:
    """Whether every file of `ckpt` is there with the size and hash its state.json recorded."""
    for name in _CHECKPOINT_FILES:
        path, want = ckpt / name, files.get(name)
        if want is None or not path.is_file() or path.stat().st_size != want["bytes"]:
            return False
        if _fingerprint(path)["sha256"] != want["sha256"]:
            return False
    return True


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of `run_dir` with the highest step whose files are all complete (others skipped with a
    warning), or None."""
    found: list[tuple[int, Path, dict[str, Any]]] = []
    for state_path in run_dir.glob("checkpoint_*/state.json"):
        try:
            state = json.loads(state_path.read_text())
            found.append((int(state["step"]), state_path.parent, dict(state.get("files") or {})))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("skipping checkpoint %s: its state.json is cut off or unreadable", state_path.parent)
    for _step, ckpt, files in sorted(found, key=lambda t: t[0], reverse=True):
        if _complete(ckpt, files):
            return ckpt
        log.warning("skipping checkpoint %s: its files do not match the sizes and hashes in state.json", ckpt)
    return None


def write_checkpoint(
    ckpt: Path, core: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Model, optimizer and `state` (step, history) into `ckpt`; state.json records each file's size and hash."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in core.state_dict().items()}, str(ckpt / "model.safetensors"))
    torch.save(optimizer.state_dict(), ckpt / "optimizer.pt")
    files = {f: _fingerprint(ckpt / f) for f in _CHECKPOINT_FILES}
    (ckpt / "state.json").write_text(json.dumps({**state, "files": files}))


def restore_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt_dir: str | Path
) -> tuple[int, list[dict[str, Any]]]:
    """Load model and optimizer state from a checkpoint directory; return its step and loss history."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(os.path.join(ckpt_dir, "model.safetensors")))
    optimizer.load_state_dict(torch.load(os.path.join(ckpt_dir, "optimizer.pt"), weights_only=True))
    state = json.loads(Path(ckpt_dir, "state.json").read_text())
    return state["step"], state["history"]
