"""Task metrics checked against hand-computed values and reference implementations."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import average_precision_score, f1_score

from msgfm.metrics import (
    PSNR_CAP_DB,
    classification_metrics,
    cloud_removal_metrics,
    is_better,
    pansharpening_metrics,
    per_image,
    per_image_psnr,
    segmentation_metrics,
    wang_bovik_q,
)


def test_classification_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, size=(40, 5))
    target[0] = 1  # every label present at least once
    logits = rng.normal(size=(40, 5)) + 1.5 * (target - 0.5)
    probs = 1 / (1 + np.exp(-logits))
    m = classification_metrics(5)
    m.update(torch.tensor(logits[:20]), torch.tensor(target[:20]))  # two batches: streaming
    m.update(torch.tensor(logits[20:]), torch.tensor(target[20:]))
    out = m.compute()
    assert out["mAP_micro"] == pytest.approx(average_precision_score(target.ravel(), probs.ravel()), abs=1e-5)
    assert out["mAP_macro"] == pytest.approx(average_precision_score(target, probs, average="macro"), abs=1e-5)
    pred = (probs >= 0.5).astype(int)
    assert out["F1_micro"] == pytest.approx(f1_score(target, pred, average="micro"), abs=1e-5)
    assert out["F1_macro"] == pytest.approx(f1_score(target, pred, average="macro"), abs=1e-5)


def test_classification_perfect_and_hand_computed() -> None:
    # label 0 is positive in rows 0 and 2, scored 0.9, 0.5, 0.4: ranks pos, neg, pos -> AP = (1 + 2/3) / 2
    target = torch.tensor([[1, 0], [0, 1], [1, 1]])
    logits = torch.logit(torch.tensor([[0.9, 0.1], [0.5, 0.8], [0.4, 0.7]]))
    out = classification_metrics(2)
    out.update(logits, target)
    res = out.compute()
    ap0 = (1 + 2 / 3) / 2  # positives at ranks 1 and 3
    ap1 = 1.0  # positives at ranks 1 and 2
    assert res["mAP_macro"] == pytest.approx((ap0 + ap1) / 2, abs=1e-5)


def test_cloud_removal_hand_values_and_references() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(0.1, 0.6, size=(2, 4, 32, 32)).astype(np.float32)
    preds = np.clip(target + rng.normal(0, 0.02, size=target.shape), 0, 1).astype(np.float32)
    m = cloud_removal_metrics(data_range=1.0)
    m.update(torch.tensor(preds), torch.tensor(target))
    out = m.compute()
    err = preds - target
    assert out["MAE"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert out["RMSE"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-5)
    psnr_ref = np.mean([peak_signal_noise_ratio(t, p, data_range=1.0) for t, p in zip(target, preds, strict=True)])
    assert out["PSNR"] == pytest.approx(psnr_ref, rel=1e-4)
    ssim_ref = np.mean(
        [
            structural_similarity(
                t, p, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            for t, p in zip(target, preds, strict=True)
        ]
    )
    assert out["SSIM"] == pytest.approx(ssim_ref, abs=0.01)
    cos = (preds * target).sum(1) / (np.linalg.norm(preds, axis=1) * np.linalg.norm(target, axis=1))
    assert out["SAM"] == pytest.approx(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean(), rel=1e-3)


def test_sam_is_angle_in_degrees() -> None:
    target = torch.zeros(1, 2, 16, 16)
    target[:, 0] = 1.0
    preds = torch.zeros(1, 2, 16, 16)
    preds[:, 0] = 1.0
    preds[:, 1] = 1.0  # 45 degrees from the target everywhere
    m = cloud_removal_metrics()
    m.update(preds, target)
    assert m.compute()["SAM"] == pytest.approx(45.0, abs=1e-3)


def test_pansharpening_ergas_and_q() -> None:
    rng = np.random.default_rng(2)
    target = rng.uniform(0.2, 0.8, size=(1, 3, 32, 32)).astype(np.float32)
    preds = (target * 1.05).astype(np.float32)  # 5 % gain error in every band
    m = pansharpening_metrics(ratio=4)
    m.update(torch.tensor(preds), torch.tensor(target))
    out = m.compute()
    rmse = np.sqrt(((preds - target) ** 2).mean(axis=(2, 3)))[0]
    mean = target.mean(axis=(2, 3))[0]
    ergas = 100 / 4 * np.sqrt(np.mean((rmse / mean) ** 2))
    assert out["ERGAS"] == pytest.approx(ergas, rel=1e-3)
    assert out["SAM"] == pytest.approx(0.0, abs=0.05)  # a gain keeps the spectral angle
    identical = pansharpening_metrics(ratio=4)
    identical.update(torch.tensor(target), torch.tensor(target))
    assert identical.compute()["Q"] == pytest.approx(1.0, abs=1e-4)
    assert out["Q"] < 1.0


def test_segmentation_hand_computed() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 2]]])  # (1, 2, 4)
    pred_labels = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 2]]])
    logits = torch.nn.functional.one_hot(pred_labels, 3).permute(0, 3, 1, 2).float()
    m = segmentation_metrics(3)
    m.update(logits, target)
    out = m.compute()
    iou = [1 / 3, 2 / 3, 3 / 4]  # class 0: tp1 fp1 fn1; class 1: tp2 fp1; class 2: tp3 fn1
    assert out["IoU_per_class"] == pytest.approx(iou, abs=1e-5)
    assert out["mIoU"] == pytest.approx(sum(iou) / 3, abs=1e-5)
    assert out["OA"] == pytest.approx(6 / 8)


def test_is_better_respects_direction_and_tolerance() -> None:
    assert is_better("mIoU", 0.50, 0.51, tolerance=0.05)
    assert not is_better("mIoU", 0.40, 0.51, tolerance=0.05)
    assert is_better("MAE", 0.030, 0.029, tolerance=0.05)
    assert not is_better("MAE", 0.040, 0.029, tolerance=0.05)


def test_q_is_wang_bovik_on_8x8_windows_by_hand() -> None:
    # one 8x8 window: x = 0..63, y = 2x + 1; cov = 2 var, var y = 4 var, mean y = 2 mx + 1
    x = torch.arange(64, dtype=torch.float64).reshape(1, 1, 8, 8) / 100
    y = 2 * x + 0.01
    mx, var = float(x.mean()), float(x.var(unbiased=False))
    my = 2 * mx + 0.01
    expected = 4 * (2 * var) * mx * my / ((var + 4 * var) * (mx**2 + my**2))
    assert float(wang_bovik_q(y.float(), x.float())[0]) == pytest.approx(expected, rel=1e-5)
    assert float(wang_bovik_q(x.float(), x.float())[0]) == pytest.approx(1.0, abs=1e-6)
    # 9x8: two windows (rows 0-7 and 1-8), averaged; a constant pair of equal value is 1 (img_qi.m)
    flat = torch.full((1, 1, 9, 8), 0.3)
    assert float(wang_bovik_q(flat, flat)[0]) == pytest.approx(1.0)
    m = pansharpening_metrics(ratio=4)
    m.update(torch.cat([y, y], dim=1).float(), torch.cat([x, x], dim=1).float())  # two bands (SAM needs them)
    assert m.compute()["Q"] == pytest.approx(expected, rel=1e-5)


def test_psnr_of_a_perfect_prediction_is_capped() -> None:
    target = torch.rand(2, 3, 16, 16)
    m = cloud_removal_metrics()
    m.update(target, target)
    assert m.compute()["PSNR"] == pytest.approx(PSNR_CAP_DB)
    assert float(per_image_psnr(target * 0.5, target).max()) < PSNR_CAP_DB


@pytest.mark.parametrize("task", ["cloud_removal", "pansharpening"])
def test_per_image_values_average_to_the_task_metrics(task: str) -> None:
    rng = np.random.default_rng(4)
    target = torch.tensor(rng.uniform(0.05, 0.6, size=(5, 4, 32, 32)), dtype=torch.float32)
    preds = (target + torch.tensor(rng.normal(0, 0.03, size=target.shape), dtype=torch.float32)).clamp(0, 1)
    m = cloud_removal_metrics() if task == "cloud_removal" else pansharpening_metrics(ratio=4)
    m.update(preds[:2], target[:2])
    m.update(preds[2:], target[2:])
    streamed = m.compute()
    values = per_image(task, preds, target)
    for name, v in values.items():
        if name == "MSE":
            assert float(v.mean().sqrt()) == pytest.approx(streamed["RMSE"], rel=1e-4)
        else:
            assert float(v.mean()) == pytest.approx(streamed[name], rel=1e-4), name
