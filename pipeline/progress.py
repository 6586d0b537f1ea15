"""A sign of life on the local runner: images done out of the total matched, the rate, the
time left and the dead letters so far, on stderr. A bar redrawn in place when stderr is a
terminal, a line every few seconds otherwise::

    segbeam: 1200/10000 images, 35.1 img/s, ETA 4m10s, 3 dead letters

The workers count into a folder (``segbeam.transforms.progress``); a thread here sums it. The
last line comes from the run's summary.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Optional, TextIO

from segbeam.transforms.progress import PROGRESS_ENV

RATE_WINDOW_SECONDS = 30.0


def read_counts(folder: str) -> dict[str, int]:
    """The counts the workers wrote, summed by kind (``done``, ``dead``)."""
    totals: dict[str, int] = collections.Counter()
    try:
        names = os.listdir(folder)
    except OSError:
        return totals
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(folder, name)) as handle:
                totals[name.split("-", 1)[0]] += int(handle.read() or 0)
        except (OSError, ValueError):  # replaced while read: next time
            continue
    return totals


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(done: int, total: Optional[int], rate: Optional[float], dead: int) -> str:
    """``segbeam: 1200/10000 images, 35.1 img/s, ETA 4m10s, 3 dead letters``."""
    parts = [f"{done}/{total} images" if total is not None else f"{done} images"]
    if rate:
        parts.append(f"{rate:.1f} img/s")
        if total is not None and total >= done:
            parts.append(f"ETA {format_duration((total - done) / rate)}")
    parts.append(f"{dead} dead letter{'s' if dead != 1 else ''}")
    return "segbeam: " + ", ".join(parts)


def _bar(done: int, total: Optional[int], width: int = 24) -> str:
    if not total:
        return ""
    filled = min(width, int(width * done / total))
    return "[" + "#" * filled + "." * (width - filled) + "] "


class ProgressReporter:
    """Prints progress while a local run runs; use as a context manager around the run.

    ``count_inputs`` gives the total (called once, in the thread, so that listing millions of
    files does not delay the start); None where the total is not known up front (TFRecord
    shards)."""

    def __init__(self, count_inputs: Callable[[], Optional[int]],
                 stream: Optional[TextIO] = None, interval: Optional[float] = None):
        stream = stream or sys.stderr  # stderr as it is now, not at import (it may be replaced)
        self.folder = tempfile.mkdtemp(prefix="segbeam-progress-")
        self._count_inputs, self._stream = count_inputs, stream
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._interval = interval if interval is not None else (0.5 if self._tty else 5.0)
        self._total: Optional[int] = None
        self._samples: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="segbeam-progress", daemon=True)

    def __enter__(self) -> "ProgressReporter":
        self._started = time.monotonic()
        self._previous = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = self.folder  # before the runner starts its workers
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        if self._previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = self._previous
        shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self, done: int, dead: int) -> None:
        """The last line, from the run's summary (exact, where the workers' files may lag by
        their last second)."""
        elapsed = time.monotonic() - self._started
        self._print(progress_line(done, self._total, done / elapsed if done else None, dead),
                    done, final=True)

    def _loop(self):
        try:
            self._total = self._count_inputs()
        except Exception:  # noqa: BLE001 - progress without a total is still progress
            self._total = None
        while not self._stop.wait(self._interval):
            self._report()

    def _rate(self, now: float, done: int) -> Optional[float]:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now - then >= 1.0 and done > before else None

    def _report(self):
        counts = read_counts(self.folder)
        done, dead = counts.get("done", 0) + counts.get("dead", 0), counts.get("dead", 0)
        self._print(progress_line(done, self._total, self._rate(time.monotonic(), done), dead),
                    done)

    def _print(self, line: str, done: int, final: bool = False):
        if self._tty:
            end = "\n" if final else ""
            self._stream.write(f"\r{_bar(done, self._total)}{line}\x1b[K{end}")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
