"""The dense-CRF stage: a thin Beam shell over ``segbeam.refinement.refine_record``.

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
from typing import Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from segbeam.crf import CrfParams
from segbeam.records import DeadLetter, one_line_reason
from segbeam.refinement import exit_with_parent, refine_record
from segbeam.transforms.safe_map import SafeMap, counted

LOG = logging.getLogger(__name__)


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
