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
from segbeam.inference import check_probability_range, is_out_of_memory
from segbeam.records import DeadLetter, SegmentationRecord, one_line_reason
from segbeam.refinement import with_marginals

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


def _restored(probabilities, placement: Placement, canvas: tuple[int, int]):
    """One image's probabilities cut from the model's output on ``canvas`` and resized back
    to the image (tensors): (those its raw labels come from, the (h, w, C) float16-rounded
    ones the CRF refines, as the stage hands them over)."""
    from keras import ops

    from segbeam.crf_keras import resize_bilinear

    half = ops.cast(ops.cast(probabilities, "float16"), "float32")
    if tuple(probabilities.shape[:2]) == (placement.height, placement.width) == canvas:
        return probabilities, half
    if tuple(probabilities.shape[:2]) != canvas:  # a model that predicts at a stride
        half = resize_bilinear(half, *canvas)
    restored = resize_bilinear(half[:placement.content_height, :placement.content_width],
                               placement.height, placement.width)
    return restored, ops.cast(ops.cast(restored, "float16"), "float32")


def _refined(records: Sequence[SegmentationRecord], probabilities,
             fused: FusedCrf) -> list[SegmentationRecord]:
    """The records (images of one size) with their CRF labels (and what ``with_marginals``
    keeps), refined together from their (B, H, W, C) probabilities (a tensor); read back to
    the host here, so that a failure of the computation (which some backends report only
    then) is theirs."""
    from keras import ops

    from segbeam.crf_keras import shared_crf

    marginals = shared_crf().refine_many([r.image for r in records], probabilities,
                                         fused.params)
    labels = _labels(ops, marginals)
    results = []
    for index, record in enumerate(records):
        if fused.needs_marginals(record):
            results.append(with_marginals(
                record, ops.convert_to_numpy(probabilities[index]).astype(np.float16),
                np.asarray(ops.convert_to_numpy(marginals[index])), fused.num_classes,
                fused.ignore_index, fused.keep_confidence))
        else:
            results.append(record.replace(crf_labels=labels[index], probabilities=None,
                                          crf_applied=True))
    return results


def _by_size(records: Sequence[SegmentationRecord]) -> list[list[int]]:
    """The records' indices grouped by image size, in order of first appearance."""
    groups: dict = {}
    for index, record in enumerate(records):
        groups.setdefault(tuple(record.image.shape[:2]), []).append(index)
    return list(groups.values())


def _alone(record: SegmentationRecord, probabilities, fused: FusedCrf,
           several: bool) -> Union[SegmentationRecord, DeadLetter]:
    """One record refined from its (H, W, C) probabilities, or its dead letter of stage
    ``crf``; out of memory in a batch of ``several``, the error goes up."""
    from keras import ops

    try:
        return _refined([record], ops.expand_dims(probabilities, 0), fused)[0]
    except Exception as error:  # noqa: BLE001 - the record becomes a dead letter
        if several and is_out_of_memory(error):
            raise
        LOG.warning("the CRF failed for %s: %r", record.key, error)
        return DeadLetter(record.key, record.source, "crf", one_line_reason(error))


def as_probabilities(scores, kind: str):
    """(N, h, w, C) model scores as probabilities, in ``keras.ops`` (symbolic, or a tensor on
    the device): the softmax of logits; declared probabilities scaled to sum to one per pixel
    as ``segbeam.inference.normalise_probabilities`` scales them (a sigmoid per class sums to
    something else; a pixel of zeros becomes uniform)."""
    from keras import ops

    if kind == "logits":
        return ops.softmax(scores, axis=-1)
    scores = ops.maximum(scores, 0)
    totals = ops.sum(scores, axis=-1, keepdims=True)
    positive = totals > 0
    uniform = ops.full_like(scores, 1.0 / scores.shape[-1])
    return ops.where(positive, scores / ops.where(positive, totals, 1.0), uniform)


def refine_batch(records: Sequence[SegmentationRecord], placements: Sequence[Placement],
                 canvas: tuple[int, int], outputs, kind: str,
                 fused: FusedCrf) -> list[Union[SegmentationRecord, DeadLetter]]:
    """Each record with raw and CRF labels, from the model's (N, h, w, C) ``outputs`` (a
    backend tensor; ``kind``: logits or probabilities) for a batch placed on ``canvas``. The
    images of one size are refined together (``KerasDenseCrf.refine_many``); where that
    fails, each alone. A record whose CRF fails is a dead letter of stage ``crf``, as in the
    CRF stage; the others of the batch are refined as usual. Out of memory in a batch of
    several, the error goes up to the handler, which runs the batch again in smaller parts
    (the model's outputs for the batch share the device's memory with the CRF)."""
    from keras import ops

    scores = ops.cast(outputs, "float32")
    if kind == "probabilities":
        check_probability_range(float(ops.convert_to_numpy(ops.min(scores))),
                                float(ops.convert_to_numpy(ops.max(scores))))
    probabilities = as_probabilities(scores, kind)
    restored = [_restored(probabilities[index], placement, canvas)
                for index, placement in enumerate(placements)]
    several = len(records) > 1
    results: list = [None] * len(records)
    for group in _by_size(records):
        raw = _labels(ops, ops.stack([restored[index][0] for index in group]))
        refined = None
        if len(group) > 1:
            try:
                refined = _refined([records[index] for index in group],
                                   ops.stack([restored[index][1] for index in group]), fused)
            except Exception as error:  # noqa: BLE001 - each is refined alone below
                if is_out_of_memory(error):
                    raise
                LOG.warning("the CRF failed for %d images together (%r); refining each alone",
                            len(group), error)
        if refined is None:
            refined = [_alone(records[index], restored[index][1], fused, several)
                       for index in group]
        for position, (index, result) in enumerate(zip(group, refined)):
            results[index] = result if isinstance(result, DeadLetter) \
                else result.replace(raw_labels=raw[position])
    return results
