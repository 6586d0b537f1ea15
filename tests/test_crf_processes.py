"""The CRF stage in worker processes (``RefineInProcesses``): the same records as in the
worker itself, in a real Beam pipeline, and a record that fails becomes a dead letter."""

import os

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from segbeam.crf import CrfParams
from segbeam.records import DeadLetter, SegmentationRecord
from segbeam.refinement import refine_record
from segbeam.transforms.refine import RefineWithCRF


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


def test_the_pools_processes_end_when_the_worker_that_started_them_is_killed(tmp_path):
    """A worker killed outright (SIGKILL, an out-of-memory kill) runs no teardown: its CRF
    processes stayed behind, idle and holding memory, for good (found 25 minutes on)."""
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    worker = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from segbeam.crf import CrfParams\n"
        "from segbeam.transforms.refine import RefineInProcesses\n"
        "stage = RefineInProcesses(2, CrfParams())\n"
        "stage.setup()\n"
        "list(stage._pool.map(abs, [1, 2, 3, 4]))  # the processes have started\n"
        f"open({str(pids)!r}, 'w').write(' '.join(map(str, stage._pool._processes)))\n"
        "time.sleep(120)\n")])
    try:
        for _ in range(600):
            if pids.exists() and pids.read_text():
                break
            time.sleep(0.1)
        children = [int(pid) for pid in pids.read_text().split()]
        assert children and all(_alive(pid) for pid in children)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    for _ in range(300):  # each checks its parent every second
        if not any(_alive(pid) for pid in children):
            break
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
