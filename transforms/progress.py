"""Counting the inputs a run has finished with, while it runs: as Beam counters (visible on
every runner) and, on a local runner, in a folder that the launcher reads
(``segbeam.pipeline.progress``).

The launcher names the folder in ``SEGBEAM_PROGRESS_DIR`` before the job starts, so that the
local runner's threads and worker processes (which inherit the environment) find it; a remote
worker has no such variable and only counts Beam counters. Each process keeps one running count
per kind and replaces its own small file about once a second, so the launcher only sums files.
Counting happens where records are finished (the mask written, the dead letter made), not after
a Flatten: the local runner runs whatever follows a Flatten only once all of its inputs are done.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics

PROGRESS_ENV = "SEGBEAM_PROGRESS_DIR"
WRITE_EVERY_SECONDS = 1.0


def write_count(path: str, count: int) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(str(count))
    os.replace(temporary, path)


class _Tally:
    """This process's counts for the run whose folder is named now, written to
    ``<folder>/<kind>-<process id>``. A process that runs one job after another (a notebook, a
    test session) starts from zero in each run's folder, not from the last run's count."""

    def __init__(self):
        self._lock = threading.Lock()
        self._folder: str | None = None
        self._counts: dict[str, int] = {}
        self._written = 0.0
        self._name = uuid.uuid4().hex

    def add(self, kind: str, count: int = 1) -> None:
        folder = os.environ.get(PROGRESS_ENV)
        with self._lock:
            if folder != self._folder:
                self._folder, self._counts, self._written = folder, {}, 0.0
            self._counts[kind] = self._counts.get(kind, 0) + count
            if not folder or time.monotonic() - self._written < WRITE_EVERY_SECONDS:
                return
            self._written = time.monotonic()
            try:
                for name, value in self._counts.items():
                    write_count(os.path.join(folder, f"{name}-{self._name}"), value)
            except OSError:  # the folder is gone: the run is over
                pass


_TALLY = _Tally()


def tally(kind: str, count: int = 1) -> None:
    """Counts ``count`` inputs finished as ``kind`` (``done`` or ``dead``)."""
    Metrics.counter("segbeam", f"progress_{kind}").inc(count)
    _TALLY.add(kind, count)


class CountProgress(beam.DoFn):
    """Counts each element as ``kind``; emits nothing."""

    def __init__(self, kind: str):
        self._kind = kind

    def process(self, _):
        tally(self._kind)
        return ()
