"""Which mask values a run scores, and the ones it cannot: counted, never dropped silently.

A mask pixel is a class (``0..num_classes-1``), the ignore index (excluded on purpose), or
unexpected: a value the run has no class for (Oxford-IIIT Pets trimaps hold 1..3, say, and
``--num_classes 3`` leaves every 3 without a class). Unexpected pixels cannot be scored; they
are counted per image with their distinct values, summed in the summary and warned about, and
``--strict_labels`` makes such a mask a dead letter instead. Pure numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from segbeam.config import Effect, setting
from segbeam.decode import InvalidInputError

SHOWN_VALUES = 10  # distinct unexpected values named in a message


@dataclasses.dataclass(frozen=True)
class MaskLabels:
    """num_classes: the classes scored. ignore_index: the value excluded on purpose, or None.
    strict: a mask with unexpected values is an error (a dead letter), not a warning."""

    num_classes: int = setting(Effect.OUTPUT)
    ignore_index: Optional[int] = setting(Effect.OUTPUT, None)
    strict: bool = setting(Effect.OUTPUT, False, omit_default=True)

    def describe_expected(self) -> str:
        ignored = f" or the ignore index {self.ignore_index}" if self.ignore_index is not None \
            else " (no ignore index)"
        return f"a class 0..{self.num_classes - 1}{ignored}"


def unexpected_labels(mask: np.ndarray, num_classes: int, ignore_index: Optional[int]
                      ) -> tuple[int, tuple[int, ...]]:
    """(pixels whose value is neither a class nor the ignore index, their distinct values,
    smallest first)."""
    counts = np.bincount(mask.ravel(), minlength=num_classes)
    counts[:num_classes] = 0
    if ignore_index is not None and 0 <= ignore_index < counts.size:
        counts[ignore_index] = 0
    return int(counts.sum()), tuple(int(v) for v in np.flatnonzero(counts))


def check_mask(mask: np.ndarray, labels: MaskLabels, what: str = "mask"
               ) -> tuple[int, tuple[int, ...]]:
    """``unexpected_labels`` of ``mask``; with ``labels.strict`` a mask that has any raises an
    ``InvalidInputError`` naming the values (its input becomes a dead letter)."""
    count, values = unexpected_labels(mask, labels.num_classes, labels.ignore_index)
    if count and labels.strict:
        raise InvalidInputError(
            f"{what} has {count} pixels of values {format_values(values)} that are not "
            f"{labels.describe_expected()} (--strict_labels); fix --num_classes / "
            f"--ignore_index, or drop --strict_labels to score the rest and count them")
    return count, values


def format_values(values) -> str:
    shown = ", ".join(str(v) for v in list(values)[:SHOWN_VALUES])
    return f"[{shown}{', ...' if len(values) > SHOWN_VALUES else ''}]"


def label_warnings(summary: dict) -> list[str]:
    """What the summary says about mask values the run could not score, in sentences."""
    labels = summary.get("labels") or {}
    warnings = []
    if labels.get("unexpected_pixels"):
        ignore = labels.get("ignore_index")
        warnings.append(
            f"{labels['unexpected_pixels']:,} mask pixels in {labels['images_with_unexpected']}"
            f" images hold values {format_values(labels['unexpected_values'])} that are neither"
            f" a class (0..{summary['num_classes'] - 1}) nor the ignore index ({ignore}); they"
            f" were not scored (check --num_classes and --ignore_index; --strict_labels makes "
            f"such masks dead letters)")
    if labels.get("images_not_checked"):
        warnings.append(f"{labels['images_not_checked']} images kept from earlier runs were "
                        f"not checked for unexpected mask values")
    return warnings
