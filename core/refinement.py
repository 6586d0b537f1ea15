"""The dense-CRF step on one record, as plain functions with no Beam in them: the CRF stage
(``segbeam.transforms.refine``) calls them in the worker or hands them to its pool of
processes, which then start without importing Beam (about a second each, paid by every run
and every restarted pool), and the fused stage reuses ``with_marginals``."""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

from segbeam.calibration import calibration_sums
from segbeam.crf import CrfParams, dense_crf, labels_from_probabilities
from segbeam.records import SegmentationRecord
from segbeam.views import confidence_map


def _calibration(record: SegmentationRecord, probabilities, num_classes: Optional[int],
                 ignore_index: Optional[int]):
    if record.mask is None or num_classes is None:
        return None
    return calibration_sums(probabilities, record.mask, num_classes, ignore_index)


def with_marginals(record: SegmentationRecord, probabilities, marginals,
                   num_classes: Optional[int] = None, ignore_index: Optional[int] = None,
                   keep_confidence: bool = False) -> SegmentationRecord:
    """``record`` refined: CRF labels from ``marginals``, the probabilities dropped; with
    ``num_classes``, the calibration sums before and after the CRF; with ``keep_confidence``,
    the CRF's top-class probability as an image."""
    return record.replace(
        crf_labels=labels_from_probabilities(marginals), probabilities=None, crf_applied=True,
        calibration_raw=_calibration(record, probabilities, num_classes, ignore_index),
        calibration_crf=_calibration(record, marginals, num_classes, ignore_index),
        confidence=confidence_map(marginals) if keep_confidence else None)


def refine_record(record: SegmentationRecord, params: CrfParams,
                  num_classes: Optional[int] = None, ignore_index: Optional[int] = None,
                  keep_confidence: bool = False) -> SegmentationRecord:
    """Adds CRF-refined labels and drops the probabilities, which no later stage needs (see
    ``with_marginals``). A record refined already, on the device right after the model
    (``segbeam.transforms.fused_crf``), passes unchanged."""
    if record.crf_applied:
        return record
    marginals = dense_crf(record.image, record.probabilities, params)
    return with_marginals(record, record.probabilities, marginals, num_classes, ignore_index,
                          keep_confidence)


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


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Ends this pool process once ``parent`` (the worker that started it) is gone. A worker
    killed outright (SIGKILL, the kernel's out-of-memory killer) ran no teardown, and its
    pool's processes stayed behind, idle, each holding its memory (still there 25 minutes
    later, when they were found)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
