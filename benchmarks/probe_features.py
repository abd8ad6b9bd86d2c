"""Linear probe of pooled encoder features on the classification chips, per encoder stage (issue 14).

For each encoder (a saved pretraining directory, or `random` for a fresh init of params.yaml's model), the
classification head's input (each stage's sensor-averaged map, average-pooled) of every train and test chip
is fitted by a one-vs-rest logistic regression on standardised features; prints test mAP_micro per stage
and the pooled features' spread across chips. Run from a directory holding data/ (chips, manifest, gates):

    python benchmarks/probe_features.py data/models/pretrain random data/models/pretrain_s2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from msgfm.config import load_params
from msgfm.datasets.task_chips import build_task_data
from msgfm.models.heads import fuse_sensors
from msgfm.models.hub import load_pretrained
from msgfm.models.msgfm import create_model_from_params


@torch.no_grad()
def pooled_stages(encoder: torch.nn.Module, split) -> list[np.ndarray]:
    """Per stage, the (N, C) average-pooled, sensor-averaged features the classification head would see."""
    known = [s for s in split.images if s in encoder.sensors]  # a single-sensor encoder sees only its sensor
    out = encoder({s: split.images[s] for s in known}, {s: split.bands[s] for s in known})
    return [m.mean(dim=(2, 3)).numpy() for m in fuse_sensors(out.features, split.present)]


def probe(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Test mAP_micro of a one-vs-rest logistic regression fitted on standardised train features."""
    scaler = StandardScaler().fit(train)
    scores = np.zeros(y_test.shape)
    for k in range(y_train.shape[1]):
        if y_train[:, k].min() == y_train[:, k].max():  # a class all or none of train has: its prior
            scores[:, k] = y_train[:, k].mean()
            continue
        fit = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(train), y_train[:, k])
        scores[:, k] = fit.predict_proba(scaler.transform(test))[:, 1]
    return float(average_precision_score(y_test, scores, average="micro"))


def main() -> None:
    """Print the probe table for the encoders named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+", help="pretraining directories, or 'random'")
    parser.add_argument("--label-fraction", type=float, default=1.0, help="share of train chips the probe fits on")
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.finetune.threads)
    data = build_task_data(params, "classification", label_fraction=args.label_fraction)
    train, test = data.splits["train"], data.splits["test"]
    y_train, y_test = train.target.numpy().astype(int), test.target.numpy().astype(int)
    prior = np.tile(y_train.mean(0), (len(y_test), 1))
    print(
        f"train n={len(y_train)} test n={len(y_test)} class prior mAP_micro "
        f"{average_precision_score(y_test, prior, average='micro'):.3f}"
    )
    for name in args.encoders:
        if name == "random":
            torch.manual_seed(params.seed)
            encoder = create_model_from_params(params.model).encoder.eval()
        else:
            encoder = load_pretrained(name).encoder.eval()
        stages_train, stages_test = pooled_stages(encoder, train), pooled_stages(encoder, test)
        for i, (a, b) in enumerate(zip(stages_train, stages_test, strict=True)):
            spread = float(np.median(a.std(0) / (np.abs(a).mean(0) + 1e-8)))
            print(
                f"{name} stage {i + 1} (C={a.shape[1]}): probe mAP_micro {probe(a, y_train, b, y_test):.3f}, "
                f"median per-feature std/|mean| across chips {spread:.3f}"
            )
        both = np.concatenate(stages_train, 1), np.concatenate(stages_test, 1)
        print(f"{name} all stages: probe mAP_micro {probe(both[0], y_train, both[1], y_test):.3f}")


if __name__ == "__main__":
    main()
