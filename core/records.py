"""The element types that flow through the pipeline.

One record type travels from decode to the sinks; each stage returns a copy with its own fields
filled in (``dataclasses.replace``) and drops what later stages no longer need, so that the
arrays crossing process and machine boundaries stay small.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, NamedTuple, Optional

import numpy as np


class ImageRef(NamedTuple):
    """An image found by a read transform, before its bytes are loaded.

    ``key`` is already sanitised: it names the outputs. ``mask_source`` is None when the image
    has no ground-truth mask. ``source_stamp``: what the listing said of the files
    (``segbeam.incremental.input_stamp``), "" where it was not asked for or not known.
    """

    key: str
    source: str
    mask_source: Optional[str] = None
    source_stamp: str = ""


class EncodedImage(NamedTuple):
    """An image (and optional mask) as encoded bytes: a file read, or one record of a shard.

    ``content_sha256`` identifies the bytes (image and mask together), so that an incremental
    run can tell an unchanged input from a changed one (see ``segbeam.incremental``);
    ``source_stamp`` is the files' stamp (``ImageRef.source_stamp``), "" for shard records.
    """

    key: str
    source: str
    image_bytes: bytes
    mask_bytes: Optional[bytes] = None
    mask_source: Optional[str] = None
    content_sha256: str = ""
    source_stamp: str = ""


@dataclasses.dataclass
class SegmentationRecord:
    """One image on its way through the stages.

    image: HxWx3 uint8 RGB. mask: HxW uint8 class ids, or None.
    probabilities: HxWxC float16 class probabilities at the image's own size (inference stage).
    raw_labels / crf_labels: HxW uint8 (uint16 above 256 classes) argmax before / after the CRF.
    confusion_raw / confusion_crf: CxC int64 confusion matrices (rows: truth, columns: prediction).
    height, width, has_mask: known from decode on, after the arrays themselves are dropped.
    content_sha256: the hash of the encoded image and mask bytes the record was decoded from;
    source_stamp: their files' stamp (``ImageRef.source_stamp``), "" where none was taken.
    unexpected_pixels / unexpected_values: mask pixels whose value is neither a class nor the
    ignore index, and those values (``segbeam.labels``); counted at decode.
    frames: how many frames the image file holds (animated or multi-page files: the first one
    is segmented).
    high_depth_peak: a 16-bit image's peak value (it was scaled from 0..65535); 0 for others.
    turned_apart: the image was turned by its EXIF orientation and its mask was not.
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
    mask_png_size: int = 0  # bytes of the mask PNG as written
    height: int = 0
    width: int = 0
    has_mask: bool = False
    crf_applied: bool = False
    content_sha256: str = ""
    source_stamp: str = ""
    unexpected_pixels: int = 0
    unexpected_values: tuple = ()
    frames: int = 1
    high_depth_peak: int = 0
    turned_apart: bool = False
    boundary_raw: Any = None  # segbeam.boundary.BoundaryScores, where there is a mask
    boundary_crf: Any = None
    calibration_raw: Any = None  # segbeam.calibration.CalibrationSums, where probabilities were
    calibration_crf: Any = None
    confidence: Optional[np.ndarray] = None  # HxW uint8 top-class probability (--write_confidence)

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


REASON_LENGTH = 300  # characters of an exception's message kept in a dead letter's reason


def _shorten(text: str) -> str:
    return text if len(text) <= REASON_LENGTH else text[:REASON_LENGTH - 3] + "..."


_RAISED = re.compile(r"^\w+(?:Error|Exception): (.+)$")


def one_line_reason(error) -> str:
    """``Type: first line of the message`` (at most ``REASON_LENGTH`` characters of it) for an
    exception, or for Beam's ``(type, repr, traceback lines)`` form of one."""
    if isinstance(error, tuple) and len(error) == 3 and isinstance(error[0], type):
        exc_type, exc_repr, trace = error
        # The traceback's last entry reads "module.Type: message"; keep the message.
        message = "".join(trace[-1:]).strip() if trace else ""
        _, sep, text = message.partition(": ")
        text = text if sep else str(exc_repr)
        name = exc_type.__name__
    else:
        text, name = str(error), type(error).__name__
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Keras colours its messages
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines[:1] == ["in user code:"]:  # a tf.function's: its trace, then the error raised
        inner = next((i for i, line in enumerate(lines) if _RAISED.match(line)), None)
        if inner is not None:
            lines = [_RAISED.match(lines[inner]).group(1)] + lines[inner + 1:]
    first = lines[0] if lines else repr(error)
    if first.startswith("Exception encountered when calling") and len(lines) > 1:
        first = f"{first} {lines[1]}"  # Keras's wrapper line; the cause is on the next one
    return f"{name}: {_shorten(first)}"


def dead_letter_from_failure(stage: str, failure: tuple) -> DeadLetter:
    """Turns Beam's ``with_exception_handling`` failure ``(element, (type, repr, traceback))``
    into a DeadLetter that names the element's key and source and the exception's message."""
    element, error = failure
    reason = one_line_reason(error)
    return DeadLetter(
        key=str(getattr(element, "key", "") or "<unknown>"),
        source=str(getattr(element, "source", "") or "<unknown>"),
        stage=stage,
        reason=reason,
    )
