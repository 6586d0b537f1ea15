"""The CRF stage in worker processes (``RefineInProcesses``): the same records as in the
worker itself, in a real Beam pipeline, and a record that fails becomes a dead letter."""

import os

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from segbeam.crf import CrfParams
from segbeam.records import DeadLetter, SegmentationRecord
from segbeam.transforms.refine import RefineWithCRF, refine_record


def _records(rng, count):
    records = []
    for index in range(count):
        image = rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)
        probabilities = rng.dirichlet(np.ones(3), size=image.shape[:2]).astype(np.float16)
        records.append(SegmentationRecord(f"k{index}", f"s{index}", image=image,
                                          probabilities=probabilities))
    return records


def _assert_stage(inputs, records, params, dead_key, describe, description):
    """The stage in 2 processes over ``inputs``: every record but ``dead_key`` refined as
    in-process, and ``dead_key`` one dead letter that ``describe`` turns into
    ``description``."""
    expected = {r.key: refine_record(r, params).crf_labels.tobytes()
                for r in records if r.key != dead_key}
    with beam.Pipeline() as pipeline:
        refined, dead = (pipeline | beam.Create(inputs)
                         | RefineWithCRF(params, processes=2))
        assert_that(refined | "Labels" >> beam.Map(lambda r: (r.key, r.crf_labels.tobytes())),
                    equal_to(sorted(expected.items())), label="refined")
        assert_that(dead | "Why" >> beam.Map(lambda d: (d.key, describe(d))),
                    equal_to([(dead_key, description)]), label="dead")


def test_processes_give_the_in_process_labels_and_dead_letter_failures(rng):
    params = CrfParams(iterations=3, min_side=8)
    records = _records(rng, 7)
    broken = records[3].replace(probabilities=records[3].probabilities[:5])  # wrong shape
    inputs = records[:3] + [broken] + records[4:]
    _assert_stage(inputs, records, params, "k3", lambda d: (type(d), d.stage,
                                                           d.reason.split(":")[0]),
                  (DeadLetter, "crf", "ValueError"))


class _KillsItsProcess:
    """Unpickled in a CRF process (a spawned child), ends that process at once, as the
    kernel's OOM killer would; unpickled in this process (Beam decodes elements between
    steps), stays itself."""

    def __reduce__(self):
        return _unpickle_killer, ()


def _unpickle_killer():
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        os._exit(3)
    return _KillsItsProcess()


def test_a_dying_process_loses_only_the_image_that_killed_it(rng):
    params = CrfParams(iterations=3, min_side=8)
    records = _records(rng, 6)
    killer = records[2].replace(image=_KillsItsProcess())
    inputs = records[:2] + [killer] + records[3:]
    _assert_stage(inputs, records, params, "k2",
                  lambda d: (d.stage, "died on this image twice" in d.reason), ("crf", True))
