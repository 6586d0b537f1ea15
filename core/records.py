"""The element types that flow through the pipeline.

One record type travels from decode to the sinks; each stage returns a copy with its own fields
filled in (``dataclasses.replace``) and drops what later stages no longer need, so that the
arrays crossing process and machine boundaries stay small.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple, Optional

import numpy as np


class ImageRef(NamedTuple):
    """An image found by a read transform, before its bytes are loaded.

    ``key`` is already sanitised: it names the outputs. ``mask_source`` is None when the image
    has no ground-truth mask.
    """

    key: str
    source: str
    mask_source: Optional[str] = None


class EncodedImage(NamedTuple):
    """An image (and optional mask) as encoded bytes: a file read, or one record of a shard.

    ``content_sha256`` identifies the bytes (image and mask together), so that an incremental
    run can tell an unchanged input from a changed one (see ``segbeam.incremental``).
    """

    key: str
    source: str
    image_bytes: bytes
    mask_bytes: Optional[bytes] = None
    mask_source: Optional[str] = None
    content_sha256: str = ""


@dataclasses.dataclass
class SegmentationRecord:
    """One image on its way through the stages.

    image: HxWx3 uint8 RGB. mask: HxW uint8 class ids, or None.
    probabilities: HxWxC float16 class probabilities at the image's own size (inference stage).
    raw_labels / crf_labels: HxW uint8 (uint16 above 256 classes) argmax before / after the CRF.
    confusion_raw / confusion_crf: CxC int64 confusion matrices (rows: truth, columns: prediction).
    height, width, has_mask: known from decode on, after the arrays themselves are dropped.
    content_sha256: the hash of the encoded image and mask bytes the record was decoded from.
    unexpected_pixels / unexpected_values: mask pixels whose value is neither a class nor the
    ignore index, and those values (``segbeam.labels``); counted at decode.
    """

    key: str
    source: str
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    mask_source: Optional[str] = None
    probabilities: Optional[np.ndarray] = None
    raw_labels: Optional[np.ndarray] = None
    crf_labels: Optional[np.ndarray] = None
    confusion_raw: Optional[np.ndarray] = None
    confusion_crf: Optional[np.ndarray] = None
    mask_path: Optional[str] = None
    height: int = 0
    width: int = 0
    has_mask: bool = False
    crf_applied: bool = False
    content_sha256: str = ""
    unexpected_pixels: int = 0
    unexpected_values: tuple = ()

    @property
    def final_labels(self) -> Optional[np.ndarray]:
        """The labels that the pipeline writes: CRF-refined where the CRF ran."""
        return self.crf_labels if self.crf_labels is not None else self.raw_labels

    def replace(self, **changes: Any) -> "SegmentationRecord":
        return dataclasses.replace(self, **changes)


class DeadLetter(NamedTuple):
    """An input that could not be used, with the stage that rejected it and why."""

    key: str
    source: str
    stage: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)


def dead_letter_from_failure(stage: str, failure: tuple) -> DeadLetter:
    """Turns Beam's ``with_exception_handling`` failure ``(element, (type, repr, traceback))``
    into a DeadLetter that names the element's key and source and the exception's message."""
    element, (exc_type, exc_repr, trace) = failure
    message = trace[-1].strip() if trace else exc_repr
    # The last traceback line reads "module.ErrorType: message"; keep the short type name.
    _, sep, text = message.partition(": ")
    reason = f"{exc_type.__name__}: {text}" if sep else f"{exc_type.__name__}: {exc_repr}"
    return DeadLetter(
        key=str(getattr(element, "key", "") or "<unknown>"),
        source=str(getattr(element, "source", "") or "<unknown>"),
        stage=stage,
        reason=reason,
    )
