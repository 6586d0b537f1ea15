"""The dense-CRF stage: a thin Beam shell over ``segbeam.crf.dense_crf``."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam

from segbeam.calibration import calibration_sums
from segbeam.crf import CrfParams, dense_crf, labels_from_probabilities
from segbeam.records import SegmentationRecord
from segbeam.views import confidence_map
from segbeam.transforms.safe_map import SafeMap


def _calibration(record: SegmentationRecord, probabilities, num_classes: Optional[int],
                 ignore_index: Optional[int]):
    if record.mask is None or num_classes is None:
        return None
    return calibration_sums(probabilities, record.mask, num_classes, ignore_index)


def refine_record(record: SegmentationRecord, params: CrfParams,
                  num_classes: Optional[int] = None, ignore_index: Optional[int] = None,
                  keep_confidence: bool = False) -> SegmentationRecord:
    """Adds CRF-refined labels and drops the probabilities, which no later stage needs; with
    ``num_classes``, the calibration sums of the probabilities before and after the CRF; with
    ``keep_confidence``, the CRF's top-class probability as an image."""
    marginals = dense_crf(record.image, record.probabilities, params)
    return record.replace(
        crf_labels=labels_from_probabilities(marginals), probabilities=None, crf_applied=True,
        calibration_raw=_calibration(record, record.probabilities, num_classes, ignore_index),
        calibration_crf=_calibration(record, marginals, num_classes, ignore_index),
        confidence=confidence_map(marginals) if keep_confidence else None)


def drop_probabilities(record: SegmentationRecord, num_classes: Optional[int] = None,
                       ignore_index: Optional[int] = None, keep_confidence: bool = False
                       ) -> SegmentationRecord:
    """Drops the probabilities; with ``num_classes`` (``--calibration`` without the CRF), keeps
    their calibration sums first; with ``keep_confidence``, their top-class probability."""
    probabilities = record.probabilities
    return record.replace(
        probabilities=None,
        calibration_raw=_calibration(record, probabilities, num_classes, ignore_index)
        if probabilities is not None else None,
        confidence=confidence_map(probabilities)
        if keep_confidence and probabilities is not None else None)


class RefineWithCRF(beam.PTransform):
    """records with probabilities -> (records with CRF labels, dead letters)."""

    def __init__(self, params: CrfParams, num_classes: Optional[int] = None,
                 ignore_index: Optional[int] = None, keep_confidence: bool = False):
        super().__init__()
        self._params, self._num_classes, self._ignore_index = params, num_classes, ignore_index
        self._keep_confidence = keep_confidence

    def expand(self, records):
        return records | "DenseCRF" >> SafeMap("crf", refine_record, self._params,
                                               self._num_classes, self._ignore_index,
                                               self._keep_confidence)
