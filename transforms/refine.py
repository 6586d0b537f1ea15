"""The dense-CRF stage: a thin Beam shell over ``segbeam.crf.dense_crf``."""

from __future__ import annotations

import apache_beam as beam

from segbeam.crf import CrfParams, dense_crf, labels_from_probabilities
from segbeam.records import SegmentationRecord
from segbeam.transforms.safe_map import SafeMap


def refine_record(record: SegmentationRecord, params: CrfParams) -> SegmentationRecord:
    """Adds CRF-refined labels and drops the probabilities, which no later stage needs."""
    marginals = dense_crf(record.image, record.probabilities, params)
    return record.replace(crf_labels=labels_from_probabilities(marginals), probabilities=None,
                          crf_applied=True)


def drop_probabilities(record: SegmentationRecord) -> SegmentationRecord:
    return record.replace(probabilities=None)


class RefineWithCRF(beam.PTransform):
    """records with probabilities -> (records with CRF labels, dead letters)."""

    def __init__(self, params: CrfParams):
        super().__init__()
        self._params = params

    def expand(self, records):
        return records | "DenseCRF" >> SafeMap("crf", refine_record, self._params)
