"""gs:// inputs, model and outputs through Beam's FileSystems, against a Cloud Storage emulator
(gcp-storage-emulator) started by the test on a loopback port; nothing leaves this machine."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam.pipeline.demo import synthetic_scene
from segbeam.pipeline.report import write_report
from segbeam.pipeline.run import run
from tests.conftest import assert_close_calibration, get, png_bytes, put, \
    without_calibration


def test_pipeline_reads_and_writes_cloud_storage(gcs_bucket, demo_model_path):
    gcs = gcs_bucket()
    rng = np.random.default_rng(9)
    truth = {}
    for index in range(5):
        image, mask = synthetic_scene(rng, 40 + 8 * index, 64)
        put(f"{gcs}/data/images/scene{index}.png", png_bytes(image))
        if index != 4:
            put(f"{gcs}/data/masks/scene{index}.png", png_bytes(mask))
        truth[f"scene{index}"] = mask
    put(f"{gcs}/data/images/broken.png", b"\x89PNG\r\n\x1a\nbroken")
    put(f"{gcs}/models/demo.keras", open(demo_model_path, "rb").read())
    argv = ["--input", f"{gcs}/data/images/*.png", "--masks", f"{gcs}/data/masks",
            "--model", f"{gcs}/models/demo.keras", "--num_classes", "3", "--input_size", "64",
            "--ignore_index", "-1", "--crf_iterations", "2", "--output", f"{gcs}/out",
            "--no_auth", "--skip_existing"]
    outcome = run(argv)

    summary = json.loads(get(f"{gcs}/out/summary.json"))
    assert summary == outcome.summary
    assert summary["counts"] | {"dead_letters_by_stage": None} == {
        "inputs": 6, "outputs": 5, "segmented": 5, "reused": 0, "skipped": 0,
        "dead_letters": 1, "dead_letters_by_stage": None, "images_with_mask": 4,
        "masks_without_image": 0, "multi_frame_images": 0, "dark_16_bit_images": 0,
        "accounted_for": True}
    assert summary["evaluation"]["crf"]["miou"] > 0.5
    metrics = FileSystems.match([f"{gcs}/out/metrics/*.parquet"])[0].metadata_list
    rows = [row for m in metrics for row in pq.read_table(io.BytesIO(get(m.path))).to_pylist()]
    assert sorted(row["key"] for row in rows) == sorted(truth)
    for row in rows:
        assert row["mask_path"] == f"{gcs}/out/masks/{row['key']}.png"
        labels = np.asarray(Image.open(io.BytesIO(get(row["mask_path"]))))
        assert labels.shape == truth[row["key"]].shape and labels.max() < 3
    dead = FileSystems.match([f"{gcs}/out/dead_letters/*.jsonl"])[0].metadata_list
    letters = [json.loads(line) for m in dead for line in get(m.path).splitlines() if line]
    assert [(d["key"], d["stage"]) for d in letters] == [("broken", "decode")]
    manifest = json.loads(get(f"{gcs}/out/manifest.json"))
    assert manifest["model_fingerprint"].startswith("sha256:")

    # A second night on the bucket: the history is read back from gs://, nothing is redone;
    # a mask no input of it claims (an earlier run's) is deleted, as on a local disk.
    # A mask deleted from the bucket is found missing by one listing of the masks, not a
    # request per reused row, and that image alone is segmented again; so is one whose mask
    # the listing gives at another size than the one written (cut short by a partial copy).
    put(f"{gcs}/out/masks/gone/old.png", b"an earlier run's")
    FileSystems.delete([f"{gcs}/out/masks/scene2.png"])
    put(f"{gcs}/out/masks/scene3.png", get(f"{gcs}/out/masks/scene3.png")[:100])
    again = run(argv)
    assert (again.summary["counts"]["segmented"], again.summary["counts"]["reused"]) == (2, 3)
    assert again.manifest["beam_counters"]["reused_rows_without_mask_file"] == 1
    assert again.manifest["beam_counters"]["reused_rows_with_damaged_mask_file"] == 1
    assert len(get(f"{gcs}/out/masks/scene3.png")) > 100
    assert again.manifest["beam_counters"]["stale_outputs_removed"] == 1
    assert sorted(m.path.rsplit("/", 1)[1] for m in FileSystems.match(
        [f"{gcs}/out/masks/**"])[0].metadata_list) == sorted(f"{key}.png" for key in truth)
    # Two images went through the model again, in another batch: calibration (from float
    # probabilities) agrees closely, every other figure exactly.
    assert without_calibration(again.summary["evaluation"])[0] == \
        without_calibration(outcome.summary["evaluation"])[0]
    assert_close_calibration(again.summary, outcome.summary)
    # And the report reads the run from the bucket and writes beside it.
    report, folder = write_report(f"{gcs}/out")
    assert folder == f"{gcs}/out/report"
    assert b"<html" in get(f"{folder}/report.html")[:200].lower()
    leftovers = [m.path for m in FileSystems.match([f"{gcs}/out/**"])[0].metadata_list
                 if ".tmp-" in m.path or "beam-temp" in m.path]
    assert leftovers == []


def test_a_masks_listing_takes_the_folder_name_literally(gcs_bucket, tmp_path):
    """--skip_existing lists a run's masks with one glob; a folder named ``out[1]`` was read
    as a pattern (``out1``), so the listing held another folder's masks, not its own, and
    every reused row was segmented again."""
    from segbeam.layout import files_under

    gcs = gcs_bucket()
    for path in ("out[1]/masks/a.png", "out[1]/masks/sub/b.png", "out1/masks/c.png",
                 "out*/masks/d.png"):
        put(f"{gcs}/{path}", b"png")
    assert sorted(files_under(f"{gcs}/out[1]/masks")) == [f"{gcs}/out[1]/masks/a.png",
                                                           f"{gcs}/out[1]/masks/sub/b.png"]
    assert list(files_under(f"{gcs}/out*/masks")) == [f"{gcs}/out*/masks/d.png"]
    (tmp_path / "out[1]" / "masks").mkdir(parents=True)
    (tmp_path / "out[1]" / "masks" / "e.png").write_bytes(b"png")
    assert list(files_under(str(tmp_path / "out[1]" / "masks"))) == [
        str(tmp_path / "out[1]" / "masks" / "e.png")]


def test_change_detection_by_stamp_reads_no_unchanged_object(gcs_bucket, demo_model_path,
                                                             monkeypatch):
    """On Cloud Storage the stamps (size, update time) come with the listing: a night with
    nothing new reads no object, and an object written again is read and segmented."""
    import segbeam.matching

    monkeypatch.setattr(segbeam.matching, "RECENT_SECONDS", 0.0)  # objects written just now
    gcs = gcs_bucket()
    rng = np.random.default_rng(4)
    for index in range(3):
        image, mask = synthetic_scene(rng, 48, 64)
        put(f"{gcs}/data/images/scene{index}.png", png_bytes(image))
        put(f"{gcs}/data/masks/scene{index}.png", png_bytes(mask))
    put(f"{gcs}/models/demo.keras", open(demo_model_path, "rb").read())
    argv = ["--input", f"{gcs}/data/images/*.png", "--masks", f"{gcs}/data/masks",
            "--model", f"{gcs}/models/demo.keras", "--num_classes", "3", "--input_size", "64",
            "--ignore_index", "-1", "--crf_iterations", "2", "--output", f"{gcs}/out",
            "--no_auth", "--skip_existing", "--change_detection", "stamp"]
    first = run(argv)
    assert first.manifest["beam_counters"]["inputs_hashed"] == 3
    again = run(argv)
    assert again.summary["counts"]["reused"] == 3
    assert again.manifest["beam_counters"].get("inputs_hashed", 0) == 0
    assert again.manifest["beam_counters"]["inputs_unchanged_by_stamp"] == 3

    image, _ = synthetic_scene(rng, 48, 64)
    put(f"{gcs}/data/images/scene1.png", png_bytes(image))
    changed = run(argv)
    counts = changed.summary["counts"]
    assert (counts["segmented"], counts["reused"]) == (1, 2)
    assert changed.manifest["beam_counters"]["inputs_hashed"] == 1
