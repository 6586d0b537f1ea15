"""Incremental and repeated runs: --skip_existing, --run_date partitions, idempotent re-runs."""

import datetime
import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbeam.pipeline.demo import synthetic_scene
from segbeam.pipeline.run import run
from segbeam.incremental import (PROCESS, REUSE, SKIP, Candidate, PriorResult,
                                    config_fingerprint, content_sha256, decide, latest_result,
                                    parse_run_date, prior_result)
from segbeam.layout import run_directory
from segbeam.transforms.write import remove_stale_shards


def test_content_hash_covers_image_and_mask():
    base = content_sha256(b"image", b"mask")
    assert base == content_sha256(b"image", b"mask")
    assert len({base, content_sha256(b"image2", b"mask"), content_sha256(b"image", b"mask2"),
                content_sha256(b"image", None), content_sha256(b"image", b"")}) == 5


def test_config_fingerprint_is_order_independent_and_value_sensitive():
    assert config_fingerprint({"a": 1, "b": [2, 3]}) == config_fingerprint({"b": [2, 3], "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})


def test_run_date_and_directory():
    assert parse_run_date("2026-11-21") == "2026-11-21"
    assert parse_run_date("today", today=datetime.date(2026, 1, 2)) == "2026-01-02"
    assert parse_run_date(None) is None
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_run_date("21/11/2026")
    assert run_directory("gs://b/out/", "2026-11-21") == "gs://b/out/date=2026-11-21"
    assert run_directory("/data/out", None) == "/data/out"


def test_prior_results_are_located_by_their_file():
    prior = prior_result("gs://b/out/date=2026-11-20/metrics/metrics-00000-of-00001.parquet",
                         {"key": "a"}, "metrics")
    assert prior == PriorResult("gs://b/out/date=2026-11-20", "2026-11-20", {"key": "a"})
    assert prior_result("/out/metrics/m.parquet", {}, "metrics").run_date == ""
    with pytest.raises(ValueError, match="metrics/ folder"):
        prior_result("/out/other/m.parquet", {}, "metrics")


def _prior(run_dir, date, sha="s1", config="c1"):
    return PriorResult(run_dir, date, {"content_sha256": sha, "config_fingerprint": config})


def test_decisions():
    candidate = Candidate("k", "s1", item="ref")
    here, earlier, later = ("/o/date=2026-11-21", "/o/date=2026-11-20", "/o/date=2026-11-22")
    assert decide(candidate, [], "c1", here, "2026-11-21") == (PROCESS, None)
    assert decide(candidate, [_prior(earlier, "2026-11-20")], "c1", here,
                  "2026-11-21")[0] == SKIP
    assert decide(candidate, [_prior(here, "2026-11-21")], "c1", here, "2026-11-21")[0] == REUSE
    # Changed bytes or another configuration: the earlier result no longer stands.
    assert decide(candidate, [_prior(earlier, "2026-11-20", sha="s0")], "c1", here,
                  "2026-11-21")[0] == PROCESS
    assert decide(candidate, [_prior(earlier, "2026-11-20")], "c2", here,
                  "2026-11-21")[0] == PROCESS
    # The newest result decides: changed on the 20th after an older identical one.
    history = [_prior("/o/date=2026-11-19", "2026-11-19"), _prior(earlier, "2026-11-20", "s0")]
    assert decide(candidate, history, "c1", here, "2026-11-21")[0] == PROCESS
    # A back-filled run ignores partitions after its own date.
    assert latest_result([_prior(later, "2026-11-22")], "2026-11-21") is None


def test_remove_stale_shards_keeps_what_was_written(tmp_path):
    for name in ("m-00000-of-00002.x", "m-00001-of-00002.x", "m-00000-of-00001.x", "other.x"):
        (tmp_path / name).write_text(name)
    kept = str(tmp_path / "m-00000-of-00001.x")
    removed = remove_stale_shards(None, str(tmp_path / "m-*-of-*.x"), [kept])
    assert [os.path.basename(p) for p in removed] == ["m-00000-of-00002.x", "m-00001-of-00002.x"]
    assert sorted(os.listdir(tmp_path)) == ["m-00000-of-00001.x", "other.x"]


# --- end to end -------------------------------------------------------------------------------

def _write_scenes(folder, count, seed=5):
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "masks", exist_ok=True)
    for index in range(count):
        image, mask = synthetic_scene(rng, 48, 64)
        Image.fromarray(image).save(folder / "images" / f"s{index:02d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"s{index:02d}.png")


def _run(data, output, model, *extra):
    """A run with these defaults; a flag in ``extra`` replaces its default (a flag given
    twice is an error)."""
    defaults = {"--input": f"{data}/images/*.png", "--masks": f"{data}/masks",
                "--output": str(output), "--model": model, "--num_classes": "3",
                "--input_size": "64", "--ignore_index": "-1", "--crf_iterations": "2",
                "--batch_size": "3"}
    kept = [item for flag, value in defaults.items() if flag not in extra
            for item in (flag, value)]
    return run([*kept, *extra])


def _rows(run_dir):
    files = glob.glob(f"{run_dir}/metrics/*.parquet")
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return {row["key"]: row for row in rows}, len(rows)


def _mask_state(run_dir):
    return {os.path.relpath(p, run_dir): (os.stat(p).st_mtime_ns, open(p, "rb").read())
            for p in glob.glob(f"{run_dir}/masks/*.png")}


def _leftovers(root):
    return [p for p in glob.glob(f"{root}/**/*", recursive=True)
            if ".tmp-" in p or "beam-temp" in p]


@pytest.mark.slow
def test_skip_existing_reuses_unchanged_and_processes_changed_and_added(tmp_path,
                                                                        demo_model_path,
                                                                        monkeypatch):
    # Files written a moment ago get no stamp (segbeam.matching.RECENT_SECONDS), and would get
    # one when the second run rewrites their rows; here they are stamped from the first run.
    monkeypatch.setattr("segbeam.matching.RECENT_SECONDS", 0.0)
    data, out = tmp_path / "data", tmp_path / "out"
    _write_scenes(data, 7)
    first = _run(data, out, demo_model_path, "--skip_existing")
    assert first.summary["counts"]["segmented"] == 7
    assert first.manifest["beam_counters"]["num_inferences"] == 7
    rows_before, _ = _rows(out)
    masks_before = _mask_state(out)

    again = _run(data, out, demo_model_path, "--skip_existing")
    counts = again.summary["counts"]
    assert (counts["segmented"], counts["reused"], counts["outputs"]) == (0, 7, 7)
    assert counts["accounted_for"]
    assert again.manifest["beam_counters"].get("num_inferences", 0) == 0  # no inference at all
    rows_after, row_count = _rows(out)
    assert row_count == 7 and rows_after == rows_before
    assert _mask_state(out) == masks_before  # not even rewritten
    assert again.summary["evaluation"] == first.summary["evaluation"]

    # One image changes, one is added: exactly those two go through the model.
    image = np.asarray(Image.open(data / "images" / "s03.png")).copy()
    image[:8] = 255
    Image.fromarray(image).save(data / "images" / "s03.png")
    Image.fromarray(image[::-1]).save(data / "images" / "s99.png")
    third = _run(data, out, demo_model_path, "--skip_existing")
    counts = third.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["reused"]) == (8, 2, 6)
    assert third.manifest["beam_counters"]["num_inferences"] == 2
    rows_third, row_count = _rows(out)
    assert row_count == 8
    assert rows_third["s03"]["content_sha256"] != rows_before["s03"]["content_sha256"]
    assert {k: rows_third[k] for k in rows_before if k != "s03"} == \
        {k: v for k, v in rows_before.items() if k != "s03"}
    assert not _leftovers(out)

    # A mask PNG deleted by hand: its row was kept, naming a file no longer there.
    os.remove(out / "masks" / "s05.png")
    fourth = _run(data, out, demo_model_path, "--skip_existing")
    counts = fourth.summary["counts"]
    assert (counts["segmented"], counts["reused"]) == (1, 7)
    assert fourth.manifest["beam_counters"]["reused_rows_without_mask_file"] == 1
    assert (out / "masks" / "s05.png").exists()
    assert _rows(out)[0]["s05"] == rows_third["s05"]

    # A mask PNG cut short (a partial copy of the folder): not kept, segmented again.
    mask_file = out / "masks" / "s04.png"
    whole = mask_file.read_bytes()
    assert rows_third["s04"]["mask_png_size"] == len(whole)
    mask_file.write_bytes(whole[:len(whole) // 2])
    fifth = _run(data, out, demo_model_path, "--skip_existing")
    counts = fifth.summary["counts"]
    assert (counts["segmented"], counts["reused"]) == (1, 7)
    assert fifth.manifest["beam_counters"]["reused_rows_with_damaged_mask_file"] == 1
    assert mask_file.read_bytes() == whole
    from segbeam.pipeline.terminal import format_report

    assert "change detection (content): 8 inputs read to be hashed\n  1 unchanged inputs " \
           "segmented again: their mask file was gone (0) or not the size it was written at " \
           "(1)" in format_report(fifth)


def test_a_changed_configuration_reprocesses_everything(tmp_path, demo_model_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_scenes(data, 3)
    _run(data, out, demo_model_path, "--skip_existing")
    changed = _run(data, out, demo_model_path, "--skip_existing", "--crf_iterations", "3")
    assert changed.summary["counts"]["segmented"] == 3
    rows, count = _rows(out)
    assert count == 3
    assert {r["config_fingerprint"] for r in rows.values()} == {
        changed.manifest["config_fingerprint"]}


@pytest.mark.slow
def test_nightly_partitions_accumulate_and_skip_what_earlier_nights_did(tmp_path,
                                                                       demo_model_path):
    data, out = tmp_path / "data", tmp_path / "nightly"
    _write_scenes(data, 5)
    night1 = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-20")
    assert night1.settings.run_dir == f"{out}/date=2026-11-20"
    night2 = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-21")
    assert night2.summary["counts"] | {"dead_letters_by_stage": None} == {
        "inputs": 5, "outputs": 0, "segmented": 0, "reused": 0, "skipped": 5,
        "dead_letters": 0, "dead_letters_by_stage": None, "images_with_mask": 0,
        "masks_without_image": 0, "multi_frame_images": 0, "dark_16_bit_images": 0,
        "accounted_for": True}
    assert _rows(f"{out}/date=2026-11-21")[1] == 0

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "s01.png")
    night3 = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-22")
    assert (night3.summary["counts"]["segmented"], night3.summary["counts"]["skipped"]) == (1, 4)
    # A night's figures cover what it segmented: said, so that they are not read as the
    # dataset's (they were printed with nothing to say so).
    from segbeam.pipeline.terminal import format_report

    assert "WARNING: this run's figures cover only the 1 input it segmented or kept: 4 " \
           "unchanged inputs were skipped" in format_report(night3)
    assert "WARNING: this run segmented nothing: 5 unchanged inputs were skipped" in \
        format_report(night2)
    rerun = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-22")
    assert (rerun.summary["counts"]["reused"], rerun.summary["counts"]["skipped"]) == (1, 4)
    assert rerun.manifest["beam_counters"].get("num_inferences", 0) == 0

    # Hive-style partitions: every night's rows read as one table with a `date` column.
    import pyarrow.dataset as ds

    table = ds.dataset(glob.glob(f"{out}/date=*/metrics/*.parquet"), format="parquet",
                       partitioning=ds.partitioning(flavor="hive"),
                       partition_base_dir=str(out)).to_table(columns=["key", "date"])
    assert sorted(zip(table["date"].to_pylist(), table["key"].to_pylist())) == [
        *[("2026-11-20", f"s{i:02d}") for i in range(5)], ("2026-11-22", "s01")]
    assert sorted(os.listdir(out)) == ["date=2026-11-20", "date=2026-11-21", "date=2026-11-22"]

    # A row standing in an earlier night whose mask is gone, or cut short (a partition copied
    # in part), was skipped on its strength: now its input is segmented again tonight.
    os.remove(out / "date=2026-11-20" / "masks" / "s02.png")
    cut = out / "date=2026-11-20" / "masks" / "s03.png"
    cut.write_bytes(cut.read_bytes()[:-10])
    night4 = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-23")
    counts, counters = night4.summary["counts"], night4.manifest["beam_counters"]
    assert (counts["segmented"], counts["skipped"], counts["accounted_for"]) == (2, 3, True)
    assert sorted(_rows(f"{out}/date=2026-11-23")[0]) == ["s02", "s03"]
    assert (counters["skipped_rows_without_mask_file"],
            counters["skipped_rows_with_damaged_mask_file"]) == (1, 1)
    assert "2 unchanged inputs segmented again: their mask file was gone (1) or not the size " \
           "it was written at (1)" in format_report(night4)
    night5 = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-24")
    assert (night5.summary["counts"]["skipped"], night5.summary["counts"]["segmented"]) == (5, 0)
    # The masks are looked for where their partition is now: a moved output root still skips.
    os.rename(out, tmp_path / "moved")
    night6 = _run(data, tmp_path / "moved", demo_model_path, "--skip_existing", "--run_date",
                  "2026-11-25")
    assert (night6.summary["counts"]["skipped"], night6.summary["counts"]["segmented"]) == (5, 0)


def test_rerunning_a_run_is_idempotent_and_removes_stale_shards(tmp_path, demo_model_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_scenes(data, 4)
    (data / "images" / "broken.png").write_bytes(b"not a png")
    first = _run(data, out, demo_model_path)
    rows_first, _ = _rows(out)
    # What an earlier run with more shards would have left behind.
    stale = out / "metrics" / "metrics-00001-of-00002.parquet"
    pq.write_table(pq.read_table(glob.glob(f"{out}/metrics/*.parquet")[0]), stale)
    (out / "dead_letters" / "dead_letters-00003-of-00004.jsonl").write_text("{}\n")

    second = _run(data, out, demo_model_path)
    rows_second, row_count = _rows(out)
    assert row_count == 4 and not stale.exists()
    assert rows_second == rows_first
    dead = [json.loads(line) for path in glob.glob(f"{out}/dead_letters/*.jsonl")
            for line in open(path) if line.strip()]
    assert [(d["key"], d["stage"]) for d in dead] == [("broken", "decode")]
    assert second.summary == first.summary
    assert not _leftovers(out)


def test_a_rerun_removes_the_per_image_files_no_input_of_it_claims(tmp_path, demo_model_path):
    """A run into an earlier run's folder left that run's masks (of inputs it no longer takes,
    or that are dead letters now), raw masks, overlays and report beside its own, to pass for
    them."""
    from segbeam.pipeline.terminal import format_report

    data, out = tmp_path / "data", tmp_path / "out"
    _write_scenes(data, 4)
    views = ("--write_raw_masks", "--write_overlays")
    _run(data, out, demo_model_path, *views, "--report")
    assert (out / "report" / "report.html").exists()
    (data / "images" / "s03.png").unlink()  # no longer an input
    (data / "images" / "s02.png").write_bytes(b"corrupt now")  # a dead letter now
    (out / "masks" / "s01.png.tmp-0123456789abcdef0123456789abcdef").write_bytes(b"killed")
    (out / "masks" / "notes.txt").write_text("the user's")  # no name a run writes

    def files(folder):
        return sorted(os.listdir(out / folder))

    again = _run(data, out, demo_model_path, *views, "--skip_existing")
    counts = again.summary["counts"]
    assert (counts["reused"], counts["dead_letters"]) == (2, 1)
    assert files("masks") == ["notes.txt", "s00.png", "s01.png"]  # reused rows keep theirs
    assert files("masks_raw") == ["s00.png", "s01.png"]
    assert files("overlays") == ["s00.jpg", "s01.jpg"]
    assert files("report") == []  # the earlier run's figures, not this one's
    removed = again.manifest["beam_counters"]["stale_outputs_removed"]
    assert removed == 2 * 3 + 1  # s02's and s03's in each folder; the temporary
    assert f"removed {removed} per-image files an earlier run left" in format_report(again)

    plain = _run(data, out, demo_model_path)  # without the views: their folders are stale
    assert files("masks") == ["notes.txt", "s00.png", "s01.png"]
    assert files("masks_raw") == files("overlays") == []
    assert plain.manifest["beam_counters"]["stale_outputs_removed"] == 4
    assert "stale_outputs_removed" not in _run(data, out, demo_model_path).manifest[
        "beam_counters"]


def test_a_stale_file_that_cannot_be_deleted_is_counted_not_fatal(tmp_path, monkeypatch):
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    from segbeam.transforms.write import delete_paths

    stuck, gone, stale = (str(tmp_path / name) for name in ("stuck.png", "gone.png", "x.png"))
    for path in (stuck, stale):
        open(path, "wb").close()

    def delete(paths):
        os.remove(stale)
        raise BeamIOError("delete", {stuck: PermissionError("read-only"),
                                     gone: FileNotFoundError(gone)})
    monkeypatch.setattr(FileSystems, "delete", delete)
    assert delete_paths([stuck, gone, stale]) == [stale]  # gone: renamed in the meantime
    assert os.path.exists(stuck)


@pytest.mark.parametrize("fold_case, removed", [(True, []), (False, ["A.png"])])
def test_where_the_output_ignores_case_a_mask_named_in_another_case_is_the_inputs_own(
        tmp_path, fold_case, removed):
    """On macOS's filesystem, this run's masks/a.png can keep the name A.png an earlier run
    gave it; the stale-file step must not take it for another input's and delete it."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from segbeam.transforms.write import RemoveStaleViews

    os.makedirs(tmp_path / "masks")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "A.png")
    with TestPipeline() as p:
        deleted = (p | beam.Create([{"key": "a"}])
                   | RemoveStaleViews(str(tmp_path), [("masks", ".png")], [],
                                      fold_case=fold_case))
        assert_that(deleted | beam.Map(os.path.basename), equal_to(removed))
    assert os.listdir(tmp_path / "masks") == ([] if removed else ["A.png"])


def test_a_reused_rows_mask_file_must_be_listed_at_the_size_it_was_written():
    from apache_beam.pvalue import TaggedOutput

    from segbeam.transforms.skip import _with_mask_file

    def kept(sizes, row, whole=({"key": "a", "miou_raw": 0.5},)):
        out = list(_with_mask_file(("/o/masks/a.png", {"reused": [("item", row)],
                                                        "listed": sizes, "rows": whole})))
        assert len(out) == 1
        return out[0].value if isinstance(out[0], TaggedOutput) else None

    row = kept([120], {"mask_png_size": 120, "source_stamp": "image=1:2:3 mask=none"})
    # The whole row of this run's folder is kept, with the stamp the decision gave it.
    assert (row["miou_raw"], row["source_stamp"]) == (0.5, "image=1:2:3 mask=none")
    assert kept([60], {"mask_png_size": 120}) is None  # cut short or replaced
    assert kept([], {"mask_png_size": 120}) is None  # gone
    assert kept([60], {}) is not None  # a row from before sizes were kept: being there will do
    assert kept([], {}) is None
    assert kept([120], {"mask_png_size": 120}, whole=()) is None  # its row is gone meanwhile
