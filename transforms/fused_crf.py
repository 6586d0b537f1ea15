"""The CRF fused after the model: on a worker whose Keras backend computes on an accelerator,
the keras CRF backend refines each image right after the model, on the device.

The model's output stays a backend tensor: softmax, the stride and placement resizes
(``segbeam.crf_keras.resize_bilinear``, the host's ``segbeam.geometry`` arithmetic) and the
CRF (``KerasDenseCrf.refine``) run where it is, and only the labels come back, raw and
refined, one or two bytes a pixel, instead of two bytes per class. Probabilities and marginals
come back only where the calibration sums (images with a mask) or confidence maps need them.
The probabilities pass through float16 as they do between the stages, so a worker's results
do not depend on whether it had an accelerator. An image whose CRF fails is a dead letter of
stage ``crf``; the rest of its batch goes on.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from segbeam.crf import CrfParams
from segbeam.geometry import Placement
from segbeam.inference import is_out_of_memory
from segbeam.records import DeadLetter, SegmentationRecord, one_line_reason
from segbeam.transforms.refine import with_marginals

LOG = logging.getLogger(__name__)


class FusedCrf(NamedTuple):
    """What the inference stage needs to refine on the device: the CRF's settings and what
    the records must carry (as ``RefineWithCRF`` takes them)."""

    params: CrfParams
    num_classes: Optional[int] = None  # for the calibration sums of images with a mask
    ignore_index: Optional[int] = None
    keep_confidence: bool = False

    def needs_marginals(self, record: SegmentationRecord) -> bool:
        """Whether the host needs this record's probabilities and marginals."""
        return (self.num_classes is not None and record.mask is not None) \
            or self.keep_confidence


def _labels(ops, values) -> np.ndarray:
    classes = int(values.shape[-1])
    return np.asarray(ops.convert_to_numpy(ops.argmax(values, axis=-1))).astype(
        np.uint8 if classes <= 256 else np.uint16)


def _refined(record: SegmentationRecord, probabilities, fused: FusedCrf) -> SegmentationRecord:
    """The record with its CRF labels (and what ``with_marginals`` keeps), its probabilities
    an (H, W, C) tensor; read back to the host here, so that a failure of the computation
    (which some backends report only then) is this record's."""
    from keras import ops

    from segbeam.crf_keras import shared_crf

    marginals = shared_crf().refine(record.image, probabilities, fused.params)
    if fused.needs_marginals(record):
        return with_marginals(record, ops.convert_to_numpy(probabilities).astype(np.float16),
                              np.asarray(ops.convert_to_numpy(marginals)), fused.num_classes,
                              fused.ignore_index, fused.keep_confidence)
    return record.replace(crf_labels=_labels(ops, marginals), probabilities=None,
                          crf_applied=True)


def refine_batch(records: Sequence[SegmentationRecord], placements: Sequence[Placement],
                 canvas: tuple[int, int], outputs, kind: str,
                 fused: FusedCrf) -> list[Union[SegmentationRecord, DeadLetter]]:
    """Each record with raw and CRF labels, from the model's (N, h, w, C) ``outputs`` (a
    backend tensor; ``kind``: logits or probabilities) for a batch placed on ``canvas``. A
    record whose CRF fails is a dead letter of stage ``crf``, as in the CRF stage; the
    others of the batch are refined as usual. Out of memory in a batch of several, the error
    goes up to the handler, which runs the batch again in smaller parts (the model's outputs
    for the batch share the device's memory with the CRF)."""
    from keras import ops

    from segbeam.crf_keras import resize_bilinear

    scores = ops.cast(outputs, "float32")
    probabilities = ops.softmax(scores, axis=-1) if kind == "logits" else scores
    results = []
    for index, (record, placement) in enumerate(zip(records, placements)):
        probs = probabilities[index]
        half = ops.cast(ops.cast(probs, "float16"), "float32")  # as the stage hands it over
        if tuple(probs.shape[:2]) == (placement.height, placement.width) == canvas:
            raw, full = _labels(ops, probs), half
        else:
            if tuple(probs.shape[:2]) != canvas:  # a model that predicts at a stride
                half = resize_bilinear(half, *canvas)
            restored = resize_bilinear(
                half[:placement.content_height, :placement.content_width],
                placement.height, placement.width)
            raw = _labels(ops, restored)
            full = ops.cast(ops.cast(restored, "float16"), "float32")
        try:
            refined = _refined(record, full, fused)
        except Exception as error:  # noqa: BLE001 - the record becomes a dead letter
            if len(records) > 1 and is_out_of_memory(error):
                raise
            LOG.warning("the CRF failed for %s: %r", record.key, error)
            results.append(DeadLetter(record.key, record.source, "crf",
                                      one_line_reason(error)))
            continue
        results.append(refined.replace(raw_labels=raw))
    return results
