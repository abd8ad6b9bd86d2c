"""Where a model runs: `auto|cpu|cuda` resolved to a torch device, batches moved there, bf16 autocast on GPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, get_args

import torch
from torch import nn

from msgfm.config.training import DeviceChoice

DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceChoice)


def resolve_device(choice: str) -> torch.device:
    """`auto`: the first GPU when torch sees one, else the CPU; `cuda` without a GPU is an error that says so."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device {choice!r}: choose one of {list(DEVICE_CHOICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU (use 'auto' or 'cpu')")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters."""
    return next(model.parameters()).device


def to_device(tree: Any, device: torch.device) -> Any:
    """Tensors of a nested dict/list/tuple moved to `device` (non-blocking); everything else as is."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, Mapping):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on CUDA (the GPU speed-up; outputs are cast back to float32 by the callers); a no-op on CPU."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        yield
