"""Boundary metrics: what region metrics hide and the CRF is for. Pure numpy and scipy.

Boundary F1 (BF; Csurka et al. 2013, SegNet's fourth column, MATLAB ``bfscore``'s default
tolerance), defined exactly so that independent implementations agree: per image, for each class
present in the labelled part of the mask or in the prediction there, the class's boundary pixels
are its pixels with an 8-neighbour outside it (a neighbour beyond the image border does not
count; pixels whose truth is the ignore index belong to no class, in both maps). Precision is
the share of predicted boundary pixels within ``theta = ceil(0.75% of the image diagonal)``
pixels (Euclidean) of a true boundary pixel, recall the other way round; the class's F1 is 1
when both boundaries are empty and 0 when only one is. The image's BF is the mean over those
classes; the dataset's, the mean over images with masks.

Boundary IoU (Cheng et al. 2021): per class, the mask pixels within ``d = round(2% of the
diagonal)`` (at least 1) of the mask's contour, as their implementation erodes it (3x3, the
image border counting as contour), for truth and prediction; intersection and union pixel
counts are kept per class, so dataset figures come from sums, like the confusion matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
from scipy import ndimage

from segbeam.metrics import FIXED_POINT, fixed_point, from_fixed_point
from scipy.spatial import cKDTree

BF_TOLERANCE = 0.0075  # of the image diagonal
BOUNDARY_IOU_RATIO = 0.02
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def bf_tolerance(height: int, width: int) -> int:
    return math.ceil(BF_TOLERANCE * math.hypot(height, width))


def _labels(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
            ignore_index: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction as int32 class ids, -1 where the truth is not a class."""
    valid = truth < num_classes
    if ignore_index is not None:
        valid &= truth != ignore_index
    return (np.where(valid, truth.astype(np.int32), -1),
            np.where(valid, prediction.astype(np.int32), -1))


def boundary_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels of a class (>= 0) with an in-image 8-neighbour of another label. Edge padding
    repeats border pixels, which are real neighbours of the pixels they pad, so the border
    itself never makes a boundary."""
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    different = np.zeros(labels.shape, dtype=bool)
    for dy, dx in _NEIGHBOURS:
        different |= padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] != labels
    return different & (labels >= 0)


def _within(source: np.ndarray, target: np.ndarray, theta: int) -> float:
    """The share of ``source`` pixels within ``theta`` (Euclidean) of a ``target`` pixel."""
    distances, _ = cKDTree(np.argwhere(target)).query(
        np.argwhere(source), distance_upper_bound=theta + 1e-9)
    return float(np.mean(distances <= theta))


def _scored(truth_labels: np.ndarray, predicted_labels: np.ndarray, num_classes: int,
            ignore_index: Optional[int]) -> np.ndarray:
    """The classes present in either map that are scored: not an ignore index that is also a
    class id (its pixels are excluded, so it has no boundary of its own to score)."""
    present = np.union1d(np.unique(truth_labels), np.unique(predicted_labels))
    scored = (present >= 0) & (present < num_classes)
    if ignore_index is not None:
        scored &= present != ignore_index
    return present[scored]


def boundary_f1(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                ignore_index: Optional[int]) -> tuple[Optional[float], np.ndarray]:
    """(the image's BF, or None when no class is present; per-class F1, NaN for classes
    absent from both maps)."""
    truth_labels, predicted_labels = _labels(prediction, truth, num_classes, ignore_index)
    theta = bf_tolerance(*truth.shape)
    truth_edges, predicted_edges = boundary_pixels(truth_labels), boundary_pixels(
        predicted_labels)
    scores = np.full(num_classes, np.nan)
    for c in _scored(truth_labels, predicted_labels, num_classes, ignore_index):
        true_edge = truth_edges & (truth_labels == c)
        predicted_edge = predicted_edges & (predicted_labels == c)
        if not true_edge.any() or not predicted_edge.any():
            scores[c] = float(not true_edge.any() and not predicted_edge.any())
            continue
        precision = _within(predicted_edge, true_edge, theta)
        recall = _within(true_edge, predicted_edge, theta)
        scores[c] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    considered = scores[~np.isnan(scores)]
    return (float(considered.mean()) if considered.size else None), scores


def _inner_band(region: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``region`` that ``width`` 3x3 erosions remove (zero padding: the image
    border is contour): chessboard distance to the outside at most ``width``. Computed in the
    region's bounding box, outside which everything is outside the region anyway."""
    band = np.zeros_like(region)
    rows, cols = np.nonzero(region)
    if rows.size:
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        padded = np.pad(region[box], 1)
        distance = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
        band[box] = region[box] & (distance <= width)
    return band


def boundary_iou_counts(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                        ignore_index: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the (intersection, union) pixel counts of the truth's and the prediction's
    boundary bands; both zero for classes absent from both maps."""
    truth_labels, predicted_labels = _labels(prediction, truth, num_classes, ignore_index)
    width = max(1, round(BOUNDARY_IOU_RATIO * math.hypot(*truth.shape)))
    intersections = np.zeros(num_classes, dtype=np.int64)
    unions = np.zeros(num_classes, dtype=np.int64)
    for c in _scored(truth_labels, predicted_labels, num_classes, ignore_index):
        true_band = _inner_band(truth_labels == c, width)
        predicted_band = _inner_band(predicted_labels == c, width)
        intersections[c] = np.count_nonzero(true_band & predicted_band)
        unions[c] = np.count_nonzero(true_band | predicted_band)
    return intersections, unions


class BoundaryScores(NamedTuple):
    """One image's boundary figures for one variant (raw or CRF)."""

    bf: Optional[float]
    bf_per_class: np.ndarray  # NaN for classes absent from both maps
    intersections: np.ndarray
    unions: np.ndarray


def score_boundaries(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: Optional[int]) -> BoundaryScores:
    bf, per_class = boundary_f1(prediction, truth, num_classes, ignore_index)
    return BoundaryScores(bf, per_class,
                          *boundary_iou_counts(prediction, truth, num_classes, ignore_index))


class BoundaryTotals:
    """Dataset sums of the boundary columns of metrics rows: BF summed over images (and per
    class over the images where the class was scored), boundary-IoU counts summed per class.
    Rows without the columns (kept from runs before they existed) are counted apart."""

    def __init__(self, num_classes: int):
        self.bf_sum, self.images, self.rows_without = 0, 0, 0  # bf_sum: fixed point
        self.bf_class = fixed_point(np.zeros((2, num_classes)))  # sums (fixed point), images
        self.counts = np.zeros((2, num_classes), dtype=np.int64)  # intersections, unions

    def add(self, row: dict, variant: str) -> None:
        bf = row.get(f"bf_{variant}")
        if f"bf_{variant}" not in row or row.get(f"boundary_union_{variant}") is None:
            self.rows_without += 1
            return
        if bf is not None:
            self.bf_sum += int(fixed_point(bf))
            self.images += 1
        classes = np.array([np.nan if x is None else x for x in row[f"bf_classes_{variant}"]])
        scored = ~np.isnan(classes)
        self.bf_class[0, scored] += fixed_point(classes[scored])
        self.bf_class[1, scored] += FIXED_POINT
        self.counts[0] += np.asarray(row[f"boundary_intersection_{variant}"], dtype=np.int64)
        self.counts[1] += np.asarray(row[f"boundary_union_{variant}"], dtype=np.int64)

    def merge(self, other: "BoundaryTotals") -> "BoundaryTotals":
        self.bf_sum += other.bf_sum
        self.images += other.images
        self.rows_without += other.rows_without
        self.bf_class += other.bf_class
        self.counts += other.counts
        return self

    __add__ = merge  # how ConfusionSum merges its accumulator's entries

    def summary(self) -> dict:
        """Dataset BF (mean over images), boundary IoU (mean over classes with a band), per
        class; None where nothing was scored."""
        sums, images = from_fixed_point(self.bf_class)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class_bf = sums / images
            per_class_iou = self.counts[0] / self.counts[1]
        valid_iou = per_class_iou[~np.isnan(per_class_iou)]
        return {"boundary_f1": float(from_fixed_point(self.bf_sum)) / self.images
                if self.images else None,
                "boundary_iou": float(valid_iou.mean()) if valid_iou.size else None,
                "boundary_images": self.images, "rows_without_boundary": self.rows_without,
                "per_class_boundary_f1": per_class_bf, "per_class_boundary_iou": per_class_iou}
