"""The dense-CRF stage: a thin Beam shell over ``segbeam.crf.dense_crf``.

pydensecrf holds the GIL for a whole image and uses one core, and the local runner runs a
stage's elements one at a time in one thread: left alone, the CRF stage used one core of the
machine (``benchmarks/RESULTS.md``, the CPU stage). With ``processes`` > 1 the stage hands
its images to that many worker processes and keeps them all busy.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from typing import Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from segbeam.calibration import calibration_sums
from segbeam.crf import CrfParams, dense_crf, labels_from_probabilities
from segbeam.records import DeadLetter, SegmentationRecord, one_line_reason
from segbeam.views import confidence_map
from segbeam.transforms.safe_map import SafeMap, counted

LOG = logging.getLogger(__name__)


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


class RefineInProcesses(beam.DoFn):
    """``refine_record`` in a pool of ``processes`` worker processes (started in ``setup``,
    spawned rather than forked: the worker may hold TensorFlow's threads). At most twice as
    many records are in flight and results leave in input order. A record that fails leaves
    as a dead letter (main output and ``dead``). When a process dies (out of memory, say),
    every record then in flight fails with it: the pool is started again once, each of those
    records is tried once more, and only one that breaks the new pool too is dead-lettered."""

    def __init__(self, processes: int, *args):
        self._processes, self._args = processes, args
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
        self._generation = 0  # which pool a future belongs to
        self._pending: collections.deque = collections.deque()

    def setup(self):
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self._processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent, initargs=(os.getpid(),))

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, record, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        self._pending.append((record, self._submit(record), timestamp, window))
        while self._pending and (len(self._pending) > 2 * self._processes
                                 or self._pending[0][1][0].done()):
            yield self._result(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            yield self._result(*self._pending.popleft())

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, record):
        return self._pool.submit(refine_record, record, *self._args), self._generation

    def _result(self, record, submitted, timestamp, window):
        (future, generation), retried = submitted, False
        while True:
            try:
                return WindowedValue(future.result(), timestamp, (window,))
            except concurrent.futures.process.BrokenProcessPool as error:
                if generation == self._generation:  # the first to find this pool broken
                    LOG.warning("a CRF process died (out of memory?); starting the pool again")
                    self.teardown()
                    self.setup()
                    self._generation += 1
                if retried:
                    failure = error
                    break
                (future, generation), retried = self._submit(record), True
            except Exception as error:  # noqa: BLE001 - the record becomes a dead letter
                failure = error
                break
        reason = one_line_reason(failure)
        if isinstance(failure, concurrent.futures.process.BrokenProcessPool):
            reason = f"the CRF process died on this image twice ({reason})"
        letter = counted(DeadLetter(record.key, record.source, "crf", reason))
        return beam.pvalue.TaggedOutput("dead", WindowedValue(letter, timestamp, (window,)))


class RefineWithCRF(beam.PTransform):
    """records with probabilities -> (records with CRF labels, dead letters); with
    ``processes`` > 1, in that many processes per worker (``RefineInProcesses``)."""

    def __init__(self, params: CrfParams, num_classes: Optional[int] = None,
                 ignore_index: Optional[int] = None, keep_confidence: bool = False,
                 processes: int = 1):
        super().__init__()
        self._params, self._num_classes, self._ignore_index = params, num_classes, ignore_index
        self._keep_confidence = keep_confidence
        self._processes = processes

    def expand(self, records):
        args = (self._params, self._num_classes, self._ignore_index, self._keep_confidence)
        if self._processes > 1:
            results = records | "DenseCRF" >> beam.ParDo(
                RefineInProcesses(self._processes, *args)).with_outputs("dead", main="refined")
            return results.refined, results.dead
        return records | "DenseCRF" >> SafeMap("crf", refine_record, *args)
