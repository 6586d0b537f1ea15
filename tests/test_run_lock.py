"""One run at a time per output folder. Two runs into one --output deleted each other's files
(each takes the other's for an earlier run's: the completion marker, the sinks' temporary
folders, masks none of its inputs names) and both reported success, over a folder whose masks
the summary did not count. A run now claims its folder (``_RUNNING``) and releases it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from segbeam.run_lock import RUNNING_MARKER, claim_output, release_output
from tests.conftest import write_random_pairs


def _marker(folder, pid: int, host: str = "") -> None:
    (folder / RUNNING_MARKER).write_text(json.dumps(
        {"host": host or socket.gethostname(), "pid": pid, "token": "theirs",
         "started_utc": "2026-12-07T01:00:00+00:00"}))


def _ended_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_claimed_folder_is_refused_to_another_claim_until_released(tmp_path):
    assert claim_output(str(tmp_path)) == []
    holder = json.loads((tmp_path / RUNNING_MARKER).read_text())
    with pytest.raises(ValueError, match=f"--output {tmp_path} is being written by another run "
                                         f"\\(process {holder['pid']} on "):
        claim_output(str(tmp_path))
    release_output(str(tmp_path))
    assert not (tmp_path / RUNNING_MARKER).exists()
    assert claim_output(str(tmp_path)) == []
    release_output(str(tmp_path))


def test_a_killed_runs_marker_is_taken_over_and_others_are_left_alone(tmp_path):
    _marker(tmp_path, _ended_pid())
    assert claim_output(str(tmp_path)) == [str(tmp_path / RUNNING_MARKER)]
    release_output(str(tmp_path))
    # another host's process table cannot be read; an empty marker (a crash while writing
    # it) says nothing: both are left for the user, with the file to delete named
    _marker(tmp_path, _ended_pid(), host="another-host")
    with pytest.raises(ValueError, match="process .* on another-host.*if no run writes there "
                                         "any more, delete .*_RUNNING"):
        claim_output(str(tmp_path))
    (tmp_path / RUNNING_MARKER).write_text("")
    with pytest.raises(ValueError, match="its marker says no more"):
        claim_output(str(tmp_path))
    release_output(str(tmp_path))  # not ours: left alone
    assert (tmp_path / RUNNING_MARKER).exists()


def test_a_run_into_a_folder_another_run_writes_is_refused_and_removes_nothing(
        tmp_path, capsys, monkeypatch):
    from segbeam.pipeline import run as run_module
    from segbeam.pipeline.cli import main

    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)] * 2)
    out = tmp_path / "out"
    argv = ["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
            "--model", "tiny_fcn", "--num_classes", "3", "--no-crf", "--quiet",
            "--output", str(out)]
    assert main(argv) == 0
    assert not (out / RUNNING_MARKER).exists()  # released at the end
    before = sorted(path.name for path in out.iterdir())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _marker(out, sleeper.pid)
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert f"is being written by another run (process {sleeper.pid} on " in error
        assert "Traceback" not in error
        assert sorted(path.name for path in out.iterdir()) == sorted(  # nothing removed
            before + [RUNNING_MARKER])
    finally:
        sleeper.kill()
        sleeper.wait()
    # a run that fails part-way releases the folder too
    monkeypatch.setattr(run_module, "build_pipeline", _fail)
    (out / RUNNING_MARKER).unlink()
    assert main(argv) == 5  # an internal error, told in one line
    assert "failed part-way" in capsys.readouterr().err
    assert not (out / RUNNING_MARKER).exists()


def _fail(*_):
    raise RuntimeError("failed part-way")


def test_the_marker_is_never_read_as_an_input(tmp_path):
    from segbeam.matching import match_files

    (tmp_path / "out").mkdir()
    _marker(tmp_path / "out", 1)
    (tmp_path / "a.png").write_bytes(b"x")
    assert [path.rsplit("/", 1)[-1] for path in match_files(
        f"{tmp_path}/**", exclude=str(tmp_path / "out"))] == ["a.png"]


def test_a_training_holds_its_output_as_a_run_does(tmp_path):
    """Two trainings into one --output (with --overwrite) each replaced the other's
    checkpoints and model mid-way."""
    from segbeam.models.training import TrainingConfig, train

    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)] * 2)
    out = tmp_path / "runs"
    out.mkdir()
    config = TrainingConfig(model="tiny_fcn", num_classes=3, output=str(out), input_size=(8, 8),
                            images=str(tmp_path / "images"), masks=str(tmp_path / "masks"),
                            batch_size=2, epochs=1, augment=False, verbose=0)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _marker(out, sleeper.pid)
        with pytest.raises(ValueError, match=f"is being written by another run \\(process "
                                             f"{sleeper.pid} on "):
            train(config)
    finally:
        sleeper.kill()
        sleeper.wait()
    train(config)  # the marker of a process that is gone is taken over
    assert sorted(os.listdir(out)) == ["checkpoints", "history.csv", "model.keras",
                                       "training.json"]
