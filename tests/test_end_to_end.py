"""The `segbeam` command end to end: outputs read back from disk."""

import glob
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbeam.pipeline.cli import main
from segbeam.pipeline.demo import synthetic_scene
from segbeam.example_proto import encode_example
from tests.conftest import png_bytes


def _scenes(folder, sizes, rng, masks_for):
    os.makedirs(f"{folder}/images", exist_ok=True)
    os.makedirs(f"{folder}/masks", exist_ok=True)
    truth = {}
    for index, size in enumerate(sizes):
        image, mask = synthetic_scene(rng, *size)
        name = f"img{index}"
        Image.fromarray(image).save(f"{folder}/images/{name}.png")
        truth[name] = mask
        if index in masks_for:
            Image.fromarray(mask).save(f"{folder}/masks/{name}.png")
    return truth


def _read_outputs(output):
    rows = pq.read_table(glob.glob(f"{output}/metrics/*.parquet")).to_pylist()
    dead = [json.loads(line) for path in glob.glob(f"{output}/dead_letters/*.jsonl")
            for line in open(path) if line.strip()]
    with open(f"{output}/summary.json") as handle:
        summary = json.load(handle)
    with open(f"{output}/manifest.json") as handle:
        manifest = json.load(handle)
    return {r["key"]: r for r in rows}, dead, summary, manifest


def test_cli_run_on_files_with_bad_inputs(tmp_path, demo_model_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    truth = _scenes(str(data), [(64, 96), (96, 64), (80, 80), (72, 120)], rng, masks_for={0, 1, 2})
    (data / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    (data / "images" / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "small.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "images" / "small.png")
    output = tmp_path / "run" / "out"
    command = [sys.executable, "-m", "segbeam.pipeline.cli", "run",
               "--input", f"{data}/images/*", "--masks", str(data / "masks"),
               "--output", str(output), "--model", demo_model_path, "--num_classes", "3",
               "--class_names", "background,disc,box", "--input_size", "64",
               "--batch_size", "3", "--ignore_index", "-1", "--fail_on_errors"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]  # dead letters + --fail_on_errors
    assert "3 dead letters (counts add up)" in result.stdout

    rows, dead, summary, manifest = _read_outputs(output)
    assert sorted(rows) == ["img0", "img1", "img2", "img3"]
    assert sorted((d["key"], d["stage"]) for d in dead) == [
        ("corrupt", "decode"), ("empty", "decode"), ("small", "decode")]
    assert "must match its image" in next(d["reason"] for d in dead if d["key"] == "small")
    assert summary["counts"] == {"inputs": 7, "outputs": 4, "segmented": 4, "reused": 0,
                                 "skipped": 0, "dead_letters": 3,
                                 "dead_letters_by_stage": {"decode": 3},
                                 "images_with_mask": 3, "masks_without_image": 0,
                                 "multi_frame_images": 0, "dark_16_bit_images": 0,
                                 "accounted_for": True}
    assert manifest["counts"] == summary["counts"]
    assert manifest["model_fingerprint"].startswith("sha256:")
    assert manifest["versions"]["apache-beam"]

    for key, row in rows.items():
        labels = np.asarray(Image.open(row["mask_path"]))
        assert labels.shape == truth[key].shape == (row["height"], row["width"])
        assert labels.max() < 3
        assert row["has_mask"] == (key != "img3")
        assert row["crf_applied"]
    assert rows["img3"]["miou_raw"] is None and rows["img3"]["iou_crf"] is None
    # The per-image figures are those of the PNG that was written (the CRF-refined labels).
    written = np.asarray(Image.open(rows["img0"]["mask_path"]))
    accuracy = float((written == truth["img0"]).mean())
    assert rows["img0"]["pixel_accuracy_crf"] == pytest.approx(accuracy)
    assert summary["evaluation"]["crf"]["miou"] > 0.5  # a trained model, not noise
    assert sorted(os.listdir(tmp_path)) == ["data", "run"]
    assert os.listdir(tmp_path / "run") == ["out"]


def test_a_run_in_which_every_input_became_a_dead_letter_is_not_a_success(
        tmp_path, tiny_model_path, capsys):
    """Every input a dead letter (here, files that are not images) exited 0 without
    --fail_on_errors: a nightly job that segmented nothing (or a shard job that packed
    nothing) passed for a success. A run that segments some of its inputs still exits 0."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.png").write_bytes(b"not an image")
    argv = ["run", "--input", str(images), "--model", tiny_model_path, "--input_size", "32",
            "--no-crf"]
    code = main([*argv, "--output", str(tmp_path / "none")])
    error = [line for line in capsys.readouterr().err.splitlines() if "ETA" not in line]
    assert (code, error) == (1, [
        "segbeam run: error: nothing was segmented: every input became a dead letter (2 at "
        f"decode); the reasons are in {tmp_path / 'none'}/dead_letters/"])

    # So with `segbeam shard`: shards that hold no example.
    assert main(["shard", "--input", str(images), "--output", str(tmp_path / "s" / "x")]) == 1
    captured = capsys.readouterr()
    assert "2 images -> 0 examples" in captured.out
    assert captured.err.splitlines() == [
        "segbeam shard: error: nothing was packed: every image became a dead letter; the "
        f"reasons are in {tmp_path / 's' / 'x'}_dead_letters/"]

    (images / "c.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    assert main([*argv, "--output", str(tmp_path / "some")]) == 0
    assert "1 segmented, 2 dead letters" in capsys.readouterr().out
    assert main(["shard", "--input", str(images), "--output", str(tmp_path / "s" / "y")]) == 0


def test_the_launcher_reads_a_saved_model_once(tmp_path, tiny_model_path, monkeypatch):
    """Without --num_classes the launcher read the model for its class count, then again to
    check it can be served: a model of 500 MB loaded three times in a local run (once on the
    worker), and one on Cloud Storage was downloaded three times."""
    from segbeam.models import keras_runtime
    from segbeam.pipeline import model_flags

    loads = []
    load = keras_runtime.load_keras_file
    monkeypatch.setattr(keras_runtime, "load_keras_file",
                        lambda *args: loads.append(args[0]) or load(*args))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    argv = ["run", "--input", str(tmp_path / "images"), "--model", tiny_model_path,
            "--input_size", "32", "--no-crf"]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 0
    assert len(loads) == 2  # the launcher's, the worker's
    assert not model_flags._KEPT  # nothing kept after the run
    # A run that fails after the class count keeps nothing either.
    assert main([*argv, "--output", str(tmp_path / "out2"), "--crf_iterations", "-1"]) == 2
    assert len(loads) == 3 and not model_flags._KEPT


def _write_shard(path, serialized_records):
    with beam.Pipeline() as p:
        _ = (p | beam.Create(serialized_records)
             | beam.io.WriteToTFRecord(path, num_shards=1, shard_name_template=""))


def test_shards_with_a_path_traversal_key_stay_inside_the_output(tmp_path, demo_model_path,
                                                                  capsys):
    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    _scenes(str(data), [(64, 64), (48, 80)], rng, masks_for={0})
    assert main(["shard", "--input", f"{data}/images/*.png", "--masks", str(data / "masks"),
                 "--output", str(tmp_path / "shards" / "train"), "--num_shards", "2"]) == 0
    assert len(glob.glob(f"{tmp_path}/shards/train-*-of-00002.tfrecord")) == 2
    image, mask = synthetic_scene(rng, 40, 40)
    evil = encode_example({"image/encoded": [png_bytes(image)],
                           "image/filename": [b"../../x.png"],
                           "image/segmentation/class/encoded": [png_bytes(mask)]})
    _write_shard(str(tmp_path / "shards" / "extra.tfrecord"),
                 [evil, b"not an example at all"])

    output = tmp_path / "out"
    code = main(["run", "--input", f"{tmp_path}/shards/*.tfrecord", "--output", str(output),
                 "--model", demo_model_path, "--num_classes", "3", "--input_size", "64",
                 "--no-crf", "--ignore_index", "-1"])
    assert code == 0
    rows, dead, summary, _ = _read_outputs(output)
    traversal = [key for key in rows if key.startswith("x-")]
    assert sorted(rows) == sorted(["img0", "img1", *traversal]) and len(traversal) == 1
    assert os.path.realpath(rows[traversal[0]]["mask_path"]).startswith(
        os.path.realpath(output) + os.sep)
    assert rows[traversal[0]]["has_mask"] and not rows["img1"]["has_mask"]
    assert not rows["img0"]["crf_applied"] and summary["evaluation"].get("crf") is None
    assert [(d["stage"]) for d in dead] == ["parse"]
    assert summary["counts"]["inputs"] == 4 and summary["counts"]["accounted_for"]
    assert sorted(os.listdir(tmp_path)) == ["data", "out", "shards"]
    assert not os.path.exists(tmp_path.parent / "x.png")


def test_missing_input_and_bad_flags_give_clear_errors(tmp_path, capsys):
    code = main(["run", "--input", str(tmp_path / "nothing" / "*.png"), "--model", "tiny_fcn",
                 "--num_classes", "3", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "matches no file" in capsys.readouterr().err
    code = main(["run", "--input", str(tmp_path / "*.png"), "--model", "tiny_fcn",
                 "--num_classes", "3", "--class_names", "a,b"])
    assert code == 2
    assert "gives 2 names but --num_classes is 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--resize_mode", "stretch"])
    assert main(["models"]) == 0
    assert "tiny_fcn" in capsys.readouterr().out
