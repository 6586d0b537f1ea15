"""--change_detection stamp: under --skip_existing, image files whose stamps (path, size,
modification and change times, from the listing) equal the standing row's are not read; any
other file is hashed as under --change_detection content."""

import os
import time

import numpy as np
import pytest
from PIL import Image

import segbeam.dataset
import segbeam.matching
from segbeam.incremental import PriorResult, input_stamp, unchanged_by_stamp
from segbeam.matching import RECENT_SECONDS, file_stamp, match_files, match_stamped_files
from segbeam.pipeline.terminal import format_report
from segbeam.records import ImageRef
from tests.test_incremental import _rows, _run, _write_scenes

STAMP = ("--skip_existing", "--change_detection", "stamp")


@pytest.fixture
def stamps_of_new_files(monkeypatch):
    """Files written by the test a moment ago get stamps (see ``RECENT_SECONDS``)."""
    monkeypatch.setattr(segbeam.matching, "RECENT_SECONDS", 0.0)


def test_a_file_stamp_needs_a_modification_time_and_a_file_at_rest():
    assert file_stamp(10, 1700000000.25) == "10:1700000000.25"
    assert file_stamp(10, 17, 18, age=60.0, inode=5) == "10:17:18:5"
    assert file_stamp(10, 0.0) == ""  # Beam's "not known": such a file is always hashed
    # Changed a moment before the listing, or "in the future" (clocks apart): no stamp.
    assert file_stamp(10, 17, 18, age=RECENT_SECONDS / 2) == ""
    assert file_stamp(10, 17, 18, age=-60.0) == ""


def test_a_file_written_a_moment_ago_has_no_stamp_until_it_is_at_rest(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"x" * 5)
    assert dict(match_stamped_files(f"{tmp_path}/*.png")) == {f"{tmp_path}/a.png": ""}
    later = time.time() + RECENT_SECONDS + 1
    monkeypatch.setattr(time, "time_ns", lambda: int(later * 1e9))
    assert dict(match_stamped_files(f"{tmp_path}/*.png"))[f"{tmp_path}/a.png"].startswith("5:")


def test_stamped_matching_lists_what_plain_matching_lists_and_stamps_follow_the_file(
        tmp_path, stamps_of_new_files):
    for name in ("a.png", "b.png", "sub/c.png"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 5)
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    for pattern in (f"{tmp_path}/*.png", f"{tmp_path}/**.png", f"{tmp_path}/a.png"):
        stamped = list(match_stamped_files(pattern))
        assert [path for path, _ in stamped] == list(match_files(pattern))
    stamps = dict(match_stamped_files(f"{tmp_path}/**.png"))
    assert stamps[f"{tmp_path}/dangling.png"] == ""  # fails at read, as a dead letter
    before = stamps[f"{tmp_path}/a.png"]
    assert before.startswith("5:")
    status = os.stat(tmp_path / "a.png")
    os.utime(tmp_path / "a.png", ns=(status.st_atime_ns, status.st_mtime_ns))  # times put back
    assert dict(match_stamped_files(f"{tmp_path}/a.png"))[f"{tmp_path}/a.png"] != before
    # A link pointed at another file of the same size and times: the inode tells them apart.
    (tmp_path / "one.png").write_bytes(b"1" * 5)
    (tmp_path / "two.png").write_bytes(b"2" * 5)
    status = os.stat(tmp_path / "one.png")
    for name in ("one.png", "two.png"):
        os.utime(tmp_path / name, ns=(status.st_atime_ns, status.st_mtime_ns))
    os.symlink(tmp_path / "one.png", tmp_path / "link.png")
    linked = dict(match_stamped_files(f"{tmp_path}/link.png"))[f"{tmp_path}/link.png"]
    os.remove(tmp_path / "link.png")
    os.symlink(tmp_path / "two.png", tmp_path / "link.png")
    assert dict(match_stamped_files(f"{tmp_path}/link.png"))[f"{tmp_path}/link.png"] != linked


def test_an_input_is_unchanged_by_stamp_only_with_known_equal_stamps_and_paths():
    stamp = input_stamp("5:1:2", "/m/a.png", "7:3:4")
    assert stamp == "image=5:1:2 mask=7:3:4"
    assert input_stamp("5:1:2", None, "") == "image=5:1:2 mask=none"
    assert input_stamp("", None, "") == "" and input_stamp("5:1:2", "/m/a.png", "") == ""
    ref = ImageRef("a", "/i/a.png", "/m/a.png", stamp)
    row = {"source": "/i/a.png", "mask_source": "/m/a.png", "source_stamp": stamp}
    latest = PriorResult("/o", "", row)
    assert unchanged_by_stamp(ref, latest)
    assert not unchanged_by_stamp(ref, None)
    assert not unchanged_by_stamp(ref._replace(source_stamp=""), latest)
    assert not unchanged_by_stamp(ref, latest._replace(row={**row, "source_stamp": None}))
    assert not unchanged_by_stamp(ref, latest._replace(row={**row, "mask_source": "/m/b.png"}))
    assert not unchanged_by_stamp(ref, latest._replace(row={**row, "source": "/j/a.png"}))


def _save_uncompressed(path, array):
    """A PNG whose size depends on its dimensions alone, so that new content keeps it."""
    Image.fromarray(array).save(path, compress_level=0)


@pytest.mark.slow
def test_by_stamp_only_files_whose_stamp_changed_are_read(tmp_path, demo_model_path,
                                                          monkeypatch, stamps_of_new_files):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_scenes(data, 5)
    first = _run(data, out, demo_model_path, *STAMP)
    assert first.summary["counts"]["segmented"] == 5
    assert first.manifest["beam_counters"]["inputs_hashed"] == 5
    rows_before, _ = _rows(out)
    assert all(row["source_stamp"].startswith("image=") for row in rows_before.values())

    again = _run(data, out, demo_model_path, *STAMP)
    counters = again.manifest["beam_counters"]
    assert (again.summary["counts"]["reused"], again.summary["counts"]["segmented"]) == (5, 0)
    assert counters.get("inputs_hashed", 0) == 0  # not one file read
    assert counters["inputs_unchanged_by_stamp"] == 5
    assert _rows(out)[0] == rows_before
    assert "change detection (stamp): 0 inputs read to be hashed, 5 unchanged by their " \
           "stamps" in format_report(again)

    # Touched (same bytes, new times): read and hashed, found unchanged, its stamp renewed.
    os.utime(data / "images" / "s01.png")
    touched = _run(data, out, demo_model_path, *STAMP)
    assert (touched.summary["counts"]["reused"], touched.summary["counts"]["segmented"]) == (5, 0)
    assert touched.manifest["beam_counters"]["inputs_hashed"] == 1
    rows, _ = _rows(out)
    assert rows["s01"]["source_stamp"] != rows_before["s01"]["source_stamp"]
    assert rows["s01"]["content_sha256"] == rows_before["s01"]["content_sha256"]
    assert _run(data, out, demo_model_path, *STAMP).manifest["beam_counters"].get(
        "inputs_hashed", 0) == 0

    # New content of the same size, the old modification time put back: the change time
    # still tells it. A changed mask is a changed input too.
    image_path = data / "images" / "s02.png"
    _save_uncompressed(image_path, np.full((48, 64, 3), 200, np.uint8))
    status = os.stat(image_path)
    second = _run(data, out, demo_model_path, *STAMP)  # s02 segmented, its stamp recorded
    assert second.summary["counts"]["segmented"] == 1
    stamp = _rows(out)[0]["s02"]["source_stamp"]
    _save_uncompressed(image_path, np.full((48, 64, 3), 90, np.uint8))
    os.utime(image_path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert os.path.getsize(image_path) == status.st_size
    mask = np.asarray(Image.open(data / "masks" / "s03.png")).copy()
    mask[:4] = (mask[:4] + 1) % 3
    Image.fromarray(mask).save(data / "masks" / "s03.png")
    changed = _run(data, out, demo_model_path, *STAMP)
    counts = changed.summary["counts"]
    assert (counts["segmented"], counts["reused"]) == (2, 3)
    assert changed.manifest["beam_counters"]["inputs_hashed"] == 2
    rows, _ = _rows(out)
    assert rows["s02"]["source_stamp"] != stamp

    # A file whose stamp changed and that cannot be read now is a dead letter, counted.
    os.utime(data / "images" / "s04.png")
    real_read = segbeam.dataset._read_file

    def failing_read(path):
        if path.endswith("s04.png"):
            raise OSError("the disk is gone")
        return real_read(path)

    monkeypatch.setattr(segbeam.dataset, "_read_file", failing_read)
    lost = _run(data, out, demo_model_path, *STAMP)
    counts = lost.summary["counts"]
    assert (counts["inputs"], counts["reused"], counts["dead_letters"]) == (5, 4, 1)
    assert counts["dead_letters_by_stage"] == {"read": 1} and counts["accounted_for"]


def test_content_detection_records_stamps_that_a_later_stamp_run_uses(
        tmp_path, demo_model_path, stamps_of_new_files):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_scenes(data, 3)
    plain = _run(data, out, demo_model_path)
    assert {row["source_stamp"] for row in _rows(out)[0].values()} == {None}
    content = _run(data, out, demo_model_path, "--skip_existing")
    assert content.manifest["beam_counters"]["inputs_hashed"] == 3
    assert plain.summary["counts"]["segmented"] == 3
    assert content.summary["counts"]["reused"] == 3
    assert all(row["source_stamp"] for row in _rows(out)[0].values())
    by_stamp = _run(data, out, demo_model_path, *STAMP)
    assert by_stamp.summary["counts"]["reused"] == 3
    assert by_stamp.manifest["beam_counters"].get("inputs_hashed", 0) == 0


@pytest.mark.parametrize("extra, message", [
    ((), "add --skip_existing"),
    (("--skip_existing", "--input_format", "tfrecord"), "applies to image files"),
])
def test_change_detection_stamp_without_its_use_is_a_usage_error(tmp_path, capsys, extra,
                                                                  message, demo_model_path):
    from segbeam.pipeline.cli import main

    data = tmp_path / "data"
    _write_scenes(data, 1)
    assert main(["run", "--input", f"{data}/images/*.png", "--output", str(tmp_path / "out"),
                 "--model", demo_model_path, "--num_classes", "3", "--change_detection",
                 "stamp", *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def _renewal_keys(run_dir):
    import glob
    import json

    return sorted(json.loads(line)["key"] for path in glob.glob(f"{run_dir}/stamps/*.jsonl")
                  for line in open(path) if line.strip())


@pytest.mark.slow
def test_under_run_date_a_touched_file_is_read_once_then_its_renewed_stamp_stands(
        tmp_path, demo_model_path, stamps_of_new_files):
    """A skipped input writes no row, so its row in an earlier partition kept the stamp it
    was made with: a touched file (every file, after a re-upload of the same data) was read
    again every night. A night that reads such a file records its new stamp (stamps/)."""
    data, out = tmp_path / "data", tmp_path / "nightly"
    _write_scenes(data, 4)

    def night(date, *extra):
        outcome = _run(data, out, demo_model_path, "--skip_existing", "--run_date", date,
                       *extra)
        counts, counters = outcome.summary["counts"], outcome.manifest["beam_counters"]
        return (counts["segmented"], counts["skipped"], counters.get("inputs_hashed", 0),
                counters.get("stamps_renewed", 0))

    mode = ("--change_detection", "stamp")
    assert night("2026-12-01", *mode) == (4, 0, 4, 0)
    os.utime(data / "images" / "s01.png")
    assert night("2026-12-02", *mode) == (0, 4, 1, 1)
    assert _renewal_keys(out / "date=2026-12-02") == ["s01"]
    assert night("2026-12-03", *mode) == (0, 4, 0, 0)  # nothing read: the renewal stands
    assert night("2026-12-02", *mode) == (0, 4, 0, 1)  # a rerun keeps its folder's renewal
    assert _renewal_keys(out / "date=2026-12-02") == ["s01"]
    # Content detection reads every input anyway; it records a renewal once, for a later
    # switch to stamps, not every night.
    os.utime(data / "masks" / "s02.png")
    assert night("2026-12-04") == (0, 4, 4, 1)
    assert night("2026-12-05") == (0, 4, 4, 0)
    assert night("2026-12-06", *mode) == (0, 4, 0, 0)
    # A file changed after its renewal is read and segmented.
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "s01.png")
    assert night("2026-12-07", *mode) == (1, 3, 1, 0)
