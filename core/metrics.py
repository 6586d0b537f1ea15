"""Segmentation metrics, accumulate-then-derive: a per-image confusion matrix, summed over the
dataset, and figures derived from a (summed) matrix. Pure numpy, no I/O.

Conventions: rows are ground truth, columns are prediction. Pixels whose ground truth equals
``ignore_index`` or lies outside ``0..num_classes-1`` are excluded. A class that appears neither
in the ground truth nor in the prediction has no IoU (NaN in arrays, null in outputs); it is
left out of means rather than counted as zero.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

# The dataset-level figures derived from a confusion matrix, in the order every output (summary,
# Parquet, terminal, report) lists them, and how people call them.
DATASET_METRICS = ("pixel_accuracy", "mean_class_accuracy", "miou", "fwiou", "mean_dice")
METRIC_LABELS = {"pixel_accuracy": "pixel accuracy", "mean_class_accuracy":
                 "mean class accuracy", "miou": "mIoU", "fwiou": "frequency-weighted IoU",
                 "mean_dice": "mean Dice / F1", "boundary_f1": "boundary F1 (BF)",
                 "boundary_iou": "boundary IoU"}
# The dataset figures of the report's and the terminal's tables: region, then boundary.
REPORTED_METRICS = DATASET_METRICS + ("boundary_f1", "boundary_iou")


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: Optional[int] = None) -> np.ndarray:
    """Counts (truth, prediction) pairs over the labelled pixels: a CxC int64 matrix."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground-truth shape "
                         f"{truth.shape}")
    truth = truth.astype(np.int64, copy=False).ravel()
    prediction = prediction.astype(np.int64, copy=False).ravel()
    valid = (truth >= 0) & (truth < num_classes)
    if ignore_index is not None:
        valid &= truth != ignore_index
    # Predictions outside the class range would alias other cells; the model cannot emit them,
    # but a foreign label map might.
    valid &= (prediction >= 0) & (prediction < num_classes)
    flat = truth[valid] * num_classes + prediction[valid]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class, NaN for classes absent from both truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall per class (correct / ground-truth pixels), NaN for classes absent from truth."""
    confusion = np.asarray(confusion, dtype=np.float64)
    truth_pixels = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(truth_pixels > 0, np.diag(confusion) / truth_pixels, np.nan)


def per_class_dice(confusion: np.ndarray) -> np.ndarray:
    """Dice / F1 per class, NaN for classes absent from both truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    total = confusion.sum(axis=0) + confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2 * intersection / total, np.nan)


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def summarise_confusion(confusion: np.ndarray, ignore_index: Optional[int] = None) -> dict:
    """Dataset (or image) figures from one confusion matrix.

    pixel_accuracy: correct / labelled pixels. mean_class_accuracy: mean recall over classes in
    the ground truth. miou: mean IoU over classes present in truth or prediction.
    fwiou: IoU weighted by each class's share of ground-truth pixels. All NaN when no pixel is
    labelled. An ``ignore_index`` that is also a class id (``--ignore_index 0`` for a model
    whose class 0 is background) names a class that is never scored: its pixels are excluded,
    so predicting it is an error for the true class but it has no figures of its own (NaN),
    rather than an IoU of 0 wherever predicted that would pull every mean down.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    unscored = np.zeros(confusion.shape[0], dtype=bool)
    if ignore_index is not None and 0 <= ignore_index < confusion.shape[0]:
        unscored[ignore_index] = True
    iou = np.where(unscored, np.nan, per_class_iou(confusion))
    dice = np.where(unscored, np.nan, per_class_dice(confusion))
    truth_pixels = confusion.sum(axis=1)
    if total:
        frequency = truth_pixels / total
        present = truth_pixels > 0
        fwiou = float(np.sum(frequency[present] * np.nan_to_num(iou[present])))
        pixel_accuracy = float(np.trace(confusion) / total)
    else:
        fwiou = pixel_accuracy = math.nan
    return {
        "labelled_pixels": total,
        "pixel_accuracy": pixel_accuracy,
        "mean_class_accuracy": _nanmean(per_class_accuracy(confusion)),
        "miou": _nanmean(iou),
        "fwiou": fwiou,
        "mean_dice": _nanmean(dice),
        "iou": iou,
        "class_accuracy": per_class_accuracy(confusion),
        "dice": dice,
        "truth_pixels": truth_pixels,
        "predicted_pixels": confusion.sum(axis=0),
    }


FIXED_POINT = 2 ** 24  # units per 1.0 of a summed float figure


def fixed_point(values) -> np.ndarray:
    """Floats as exact integers (Python ints, object array) of 2**-24 units. Dataset sums of
    per-image floats (calibration, boundary F1) add these, so the sum does not depend on the
    order rows arrive in: the same rows give the same figures on any runner, bit for bit."""
    return np.array([int(round(float(v) * FIXED_POINT)) for v in np.ravel(values)],
                    dtype=object).reshape(np.shape(values))


def from_fixed_point(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) / FIXED_POINT


def nan_to_none(values) -> list:
    """A float sequence as a list with None where a value is NaN (null in Parquet and JSON)."""
    return [None if math.isnan(v) else v for v in map(float, values)]


def sparse_confusion(confusion: np.ndarray) -> list[dict]:
    """The non-zero cells of a confusion matrix as ``{truth, predicted, pixels}`` records: how a
    per-image matrix is stored in the metrics Parquet (compact for any class count)."""
    truth, predicted = np.nonzero(confusion)
    return [{"truth": int(t), "predicted": int(p), "pixels": int(confusion[t, p])}
            for t, p in zip(truth, predicted)]


def dense_confusion(cells: list[dict], num_classes: int) -> np.ndarray:
    """The CxC int64 matrix of ``sparse_confusion`` cells."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for cell in cells:
        truth, predicted = cell["truth"], cell["predicted"]
        if not (0 <= truth < num_classes and 0 <= predicted < num_classes):
            raise ValueError(f"confusion cell ({truth}, {predicted}) lies outside "
                             f"{num_classes} classes; the row belongs to another class set")
        confusion[truth, predicted] += cell["pixels"]
    return confusion
