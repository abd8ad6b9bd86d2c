"""Chip-store task splits streamed from the store (msgfm.datasets.store_split, `finetune.stream_chips`).

On the tiny world: a streamed split reads exactly the samples the in-memory split holds, holds no pixels itself,
narrows and subsets like it, and fine-tuning on it (through DataLoader workers) reaches the same validation value.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_world import working_directory

from msgfm.config import load_params
from msgfm.datasets.loaders import split_loader
from msgfm.datasets.store_split import StoreSplit
from msgfm.datasets.task_chips import accepted_chips, build_task_data
from msgfm.datasets.tasks import TASKS, TaskSplit
from msgfm.models import create_model_from_params
from msgfm.models.hub import save_pretrained
from msgfm.training.finetune import finetune_task_data, tune_variant

FAST = {
    "label_fraction": 1.0,
    "trials": 1,
    "epochs": 1,
    "min_steps_per_epoch": 2,
    "batch_sizes": [8],
    "freeze_choices": [False],
    "holdout_aois": [],
    "train_until": None,
    "threads": 1,
    "max_val_chips": 8,
    "variants": ["pretrained"],
}


@pytest.fixture(scope="module")
def project(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny world with fast finetune params and an untrained msGFM saved as the pretrained model."""
    dest = tmp_path_factory.mktemp("store_split") / "p"
    shutil.copytree(tiny_world, dest, ignore=shutil.ignore_patterns("checkpoints", "models", "metrics", "plots"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["finetune"] = FAST
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with working_directory(dest):
        p = load_params("params.yaml")
        torch.manual_seed(0)
        save_pretrained(create_model_from_params(p.model), p.finetune.pretrained_model)
    return dest


def _same_sample(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("task", TASKS)
def test_a_streamed_split_reads_the_samples_the_in_memory_split_holds(project: Path, task: str) -> None:
    with working_directory(project):
        params = load_params("params.yaml")
        loaded = accepted_chips(params)
        memory = build_task_data(params, task, loaded=loaded)
        streamed = build_task_data(params, task, loaded=loaded, stream=True)
    assert streamed.splits.keys() == memory.splits.keys() and streamed.class_codes == memory.class_codes
    for name, split in streamed.splits.items():
        held = memory.splits[name]
        assert isinstance(split, StoreSplit) and isinstance(held, TaskSplit)
        assert len(split) == len(held) > 0 and split.bands == held.bands
        for i in range(len(split)):
            _same_sample(split[i], held[i])
        per_chip = sum(x[0].numel() * x.element_size() for x in held.images.values())  # >= 12 kB here
        # it keeps store indices and ids (~300 B a sample), not chips; the store pickles without its mapped shards
        assert len(pickle.dumps(split)) < 16_000 + 300 * len(split) < 16_000 + per_chip * len(split) / 8
    test = streamed.splits["test"]
    batch = next(iter(split_loader(test, batch_size=len(test), workers=1)))  # a DataLoader worker reads the store
    held = memory.splits["test"]
    for sensor, images in held.images.items():
        assert torch.equal(batch.images[sensor], images) and torch.equal(batch.present[sensor], held.present[sensor])
    assert torch.equal(batch.target, held.target)


def test_subset_only_and_fingerprint_follow_the_samples(project: Path) -> None:
    with working_directory(project):
        params = load_params("params.yaml")
        loaded = accepted_chips(params)
        memory = build_task_data(params, "classification", loaded=loaded).splits["train"]
        streamed = build_task_data(params, "classification", loaded=loaded, stream=True).splits["train"]
        again = build_task_data(params, "classification", loaded=loaded, stream=True).splits["train"]
    picks = np.array([3, 0, len(streamed) - 1])
    part = streamed.subset(picks)
    for i, j in enumerate(picks.tolist()):
        _same_sample({**part[i], "index": j}, streamed[j])
    s2 = streamed.only(["s2"])
    assert set(s2.bands) == {"s2"} and not any(k.endswith("_s1") for k in s2[0])
    assert torch.equal(s2[0]["image_s2"], memory[0]["image_s2"])
    assert streamed.fingerprint() == again.fingerprint()  # what is read, not when
    assert len({streamed.fingerprint(), part.fingerprint(), s2.fingerprint()}) == 3


def test_fine_tuning_on_the_streamed_store_matches_the_in_memory_run(project: Path) -> None:
    """`finetune.stream_chips` with a DataLoader worker: the same batches, so the same validation value."""
    values = {}
    with working_directory(project):
        for stream in (False, True):
            params = load_params("params.yaml")
            params.finetune.stream_chips = stream
            params.finetune.loader_workers = int(stream)
            params.finetune.out_dir = Path(f"data/models_stream_{stream}")
            data = finetune_task_data(params, "segmentation")
            kind = StoreSplit if stream else TaskSplit
            assert isinstance(data.splits["train"], kind) and isinstance(data.splits["val"], kind)
            assert len(data.splits["val"]) <= params.finetune.max_val_chips
            values[stream] = tune_variant(params, data, "pretrained")["value"]
    assert np.isfinite(values[False]) and values[True] == pytest.approx(values[False], abs=1e-6)
