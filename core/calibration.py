"""Calibration of class probabilities against the mask: expected calibration error (ECE) over
15 equal-width confidence bins, negative log-likelihood and Brier score, over the labelled
pixels. Pure numpy.

Each image keeps sums, not figures: per bin the pixel count, the summed confidence (top-class
probability) and the count of pixels whose top class is the truth; the summed NLL and Brier
score (``to_vector``: what a metrics row stores). Dataset figures (and those of any subset
of rows, or of several runs) come from sums:
``ECE = sum_b |accuracy_b - confidence_b| * n_b / N``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

BINS = 15
NLL_FLOOR = 1e-7  # a probability of 0 for the true class (float16 underflow) counts as this


class CalibrationSums(NamedTuple):
    bins: np.ndarray  # (3, BINS): pixel count, summed confidence, correct count
    nll: float
    brier: float

    @property
    def pixels(self) -> int:
        return int(self.bins[0].sum())


def calibration_sums(probabilities: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: Optional[int]) -> CalibrationSums:
    """Sums for HxWxC probabilities against an HxW mask, over its labelled pixels."""
    valid = truth < num_classes
    if ignore_index is not None:
        valid &= truth != ignore_index
    probs = probabilities[valid].astype(np.float64)
    labels = truth[valid].astype(np.int64)
    bins = np.zeros((3, BINS))
    if labels.size == 0:
        return CalibrationSums(bins, 0.0, 0.0)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.minimum((confidence * BINS).astype(np.int64), BINS - 1)
    bins[0] = np.bincount(index, minlength=BINS)
    bins[1] = np.bincount(index, weights=confidence, minlength=BINS)
    bins[2] = np.bincount(index, weights=correct, minlength=BINS)
    true_probability = probs[np.arange(labels.size), labels]
    nll = float(-np.log(np.maximum(true_probability, NLL_FLOOR)).sum())
    brier = float(((probs ** 2).sum(axis=1) - 2 * true_probability + 1).sum())
    return CalibrationSums(bins, nll, brier)


def calibration_figures(sums: CalibrationSums) -> Optional[dict]:
    """ECE, mean NLL and Brier score per pixel, and the reliability bins; None without pixels."""
    pixels = sums.pixels
    if not pixels:
        return None
    count, confidence, correct = sums.bins
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.abs(correct / count - confidence / count)
    ece = float(np.nansum(gaps * count) / pixels)
    bins = [{"lower": b / BINS, "upper": (b + 1) / BINS, "pixels": int(count[b]),
             "confidence": float(confidence[b] / count[b]) if count[b] else None,
             "accuracy": float(correct[b] / count[b]) if count[b] else None}
            for b in range(BINS)]
    return {"ece": ece, "nll": sums.nll / pixels, "brier": sums.brier / pixels,
            "pixels": pixels, "bins": bins}


def to_vector(sums: CalibrationSums) -> np.ndarray:
    """The sums as one vector (bins row by row, then NLL and Brier): what a metrics row stores
    and what sums add as."""
    return np.concatenate([sums.bins.ravel(), [sums.nll, sums.brier]])


def from_vector(vector) -> CalibrationSums:
    vector = np.asarray(vector, dtype=np.float64)
    return CalibrationSums(vector[:3 * BINS].reshape(3, BINS), float(vector[-2]),
                           float(vector[-1]))


VECTOR_LENGTH = 3 * BINS + 2
