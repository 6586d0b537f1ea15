"""Progress on the local runner: the line's format, and a run that reports as it goes and ends
with every input counted."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from segbeam.pipeline.progress import format_duration, progress_line, read_counts
from segbeam.transforms.progress import write_count


def test_the_progress_line_reads_as_documented():
    assert progress_line(1200, 10000, 35.2, 3) == \
        "segbeam: 1200/10000 images, 35.2 img/s, ETA 4m10s, 3 dead letters"
    assert progress_line(0, None, None, 1) == "segbeam: 0 images, 1 dead letter"
    assert format_duration(3725) == "1h02m" and format_duration(9) == "9s"


def test_counts_from_several_workers_are_summed(tmp_path):
    write_count(str(tmp_path / "done-a"), 5)
    write_count(str(tmp_path / "done-b"), 7)
    write_count(str(tmp_path / "dead-c"), 2)
    (tmp_path / "done-d.tmp").write_text("100")  # being replaced: not counted
    assert read_counts(str(tmp_path)) == {"done": 12, "dead": 2}


def test_a_process_that_runs_twice_counts_each_run_from_zero(tmp_path, monkeypatch):
    """The workers' running counts lived for the process: a second run in one process (a
    notebook, a test session) reported '9/4 images'."""
    from segbeam.transforms import progress

    monkeypatch.setattr(progress, "WRITE_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(progress, "_TALLY", progress._Tally())
    for run_index, done in enumerate((4, 3)):
        folder = tmp_path / f"run{run_index}"
        folder.mkdir()
        monkeypatch.setenv(progress.PROGRESS_ENV, str(folder))
        for _ in range(done):
            progress.tally("done")
        assert read_counts(str(folder)) == {"done": done}


def _inputs(folder, count):
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / "images" / f"i{index:03d}.png")
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG broken")


def test_a_local_run_reports_progress_and_ends_with_every_input(tmp_path, monkeypatch):
    from segbeam.pipeline import run as run_module
    from segbeam.pipeline.progress import ProgressReporter

    stream = io.StringIO()
    monkeypatch.setattr(run_module, "ProgressReporter",
                        lambda count: ProgressReporter(count, stream=stream, interval=0.2))
    _inputs(tmp_path, 30)
    argv = ["--input", f"{tmp_path}/images/*.png", "--model", "tiny_fcn", "--num_classes", "3",
            "--input_size", "16", "--no-crf", "--output", str(tmp_path / "out")]
    run_module.run(argv)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert all(re.fullmatch(r"segbeam: \d+/31 images(, [\d.]+ img/s(, ETA \w+)?)?, "
                            r"\d+ dead letters?", line) for line in lines), lines
    assert re.fullmatch(r"segbeam: 31/31 images, [\d.]+ img/s, ETA 0s, 1 dead letter", lines[-1])

    stream.seek(0)
    stream.truncate()
    run_module.run(argv + ["--quiet"])
    assert stream.getvalue() == ""


def test_progress_goes_to_stderr_as_it_is_when_the_run_starts(monkeypatch):
    """The default stream was sys.stderr as it was when the module was imported: after a
    caller replaced stderr (pytest's capture, a notebook) and closed the old one, every later
    run failed with 'I/O operation on closed file'."""
    import sys

    from segbeam.pipeline.progress import ProgressReporter

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    first.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    with ProgressReporter(lambda: 3, interval=0.01) as progress:
        progress.finish(3, 0)
    assert "3/3 images" in now.getvalue()
